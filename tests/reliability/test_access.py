"""Access control against the real server: every operation of its own OpenAPI schema
tried with no token, a bad token, another host's tokens and every role; an agent token
can never delete, prune, overwrite the key or read another host; secrets never reach the
logs; TLS is verified by default and a pinned fingerprint is enforced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from cdpcore import records
from cdpcore.api import API_PREFIX, Role
from cdpcore.client import CdpClient
from cdpcore.errors import ConnectionFailed
from cdpcore.keys import WrappedKey, new_master_key
from hotcopy import config as agentconf

from .conftest import record
from .pointkit import build, new_codec, push

REPO = Path(__file__).resolve().parents[2]
ANY, READ, WRITE, ADMIN = "any", "read", "write", "admin"
#: Who may call each operation: (method, path template) -> rule. An operation the schema
#: has and this table lacks fails the test, so a new endpoint must be classified here.
RULES: dict[tuple[str, str], str] = {
    ("GET", "/health"): "public",
    ("GET", "/hosts"): ANY,
    ("POST", "/hosts"): ADMIN,
    ("GET", "/hosts/{host}"): READ,
    ("DELETE", "/hosts/{host}"): ADMIN,
    ("POST", "/hosts/{host}/tokens"): ADMIN,
    ("GET", "/hosts/{host}/key"): READ,
    ("PUT", "/hosts/{host}/key"): WRITE,
    ("POST", "/hosts/{host}/{kind}/missing"): WRITE,
    ("POST", "/hosts/{host}/{kind}/fetch"): READ,
    ("POST", "/hosts/{host}/points"): WRITE,
    ("GET", "/hosts/{host}/points"): READ,
    ("GET", "/hosts/{host}/points/{point_id}"): READ,
    ("GET", "/hosts/{host}/damaged"): READ,
    ("GET", "/hosts/{host}/retention"): ADMIN,
    ("PUT", "/hosts/{host}/retention"): ADMIN,
    ("PUT", "/hosts/{host}/points/{point_id}/pin"): ADMIN,
    ("DELETE", "/hosts/{host}/points/{point_id}/pin"): ADMIN,
    ("DELETE", "/hosts/{host}/points/{point_id}"): ADMIN,
    ("POST", "/admin/prune"): ADMIN,
    ("POST", "/admin/gc"): ADMIN,
    ("POST", "/admin/verify"): ADMIN,
    ("POST", "/hosts/{host}/{kind}"): WRITE,
}
ALLOWED = {READ: {Role.agent, Role.restore, Role.admin}, WRITE: {Role.agent, Role.admin},
           ADMIN: {Role.admin}, ANY: {Role.agent, Role.restore, Role.admin}}


def operations(server: Any) -> list[tuple[str, str]]:
    schema = requests.get(f"{server.url}/openapi.json", verify=str(server.ca_path),
                          timeout=30).json()
    ops = []
    for path, item in schema["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "delete", "patch"):
                ops.append((method.upper(), path.removeprefix(API_PREFIX)))
    return ops


def call(server: Any, method: str, template: str, token: str | None, host: str,
         point_id: str, oid: str = "ab" * 32,
         commit: dict[str, Any] | None = None) -> requests.Response:
    path = template.format(host=host, kind="chunks", point_id=point_id)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    if template.endswith(("/missing", "/fetch")):
        body = {"ids": [oid]}
    elif template.endswith("/points") and method == "POST":
        body = commit or {}
    elif template == "/hosts":
        body = {"name": "intruder"}
    elif template.endswith("/retention"):
        body = {"keep_last": 1}
    elif template.endswith("/tokens"):
        body = {"role": "agent"}
    elif template.endswith("/key"):
        body = WrappedKey.create(new_master_key(), "other", n=2**10).to_json()
    elif template == "/hosts/{host}/{kind}":
        headers["Content-Type"] = records.CURRENT.media_type
        kwargs["data"] = b""
    if method in ("POST", "PUT") and "data" not in kwargs:
        kwargs["json"] = body
    return requests.request(method, server.url + API_PREFIX + path, headers=headers,
                            verify=str(server.ca_path), timeout=30, **kwargs)


def test_every_endpoint_refuses_the_wrong_caller(cdp_server: Any) -> None:
    alpha, beta = cdp_server.add_host("alpha"), cdp_server.add_host("beta")
    codec = new_codec()
    agent = cdp_server.client(alpha[Role.agent])
    key = WrappedKey.create(new_master_key(), "pw", n=2**10).to_json()
    agent.put_key("alpha", key)
    built = build(codec, "alpha", {"sda": os.urandom(8 * 4096)})
    point = push(agent, built)
    chunk = sorted(built.chunks)[0].hex()
    commit = built.request.model_dump(mode="json")
    ops = operations(cdp_server)
    assert set(ops) == set(RULES), f"unclassified or vanished operations: {set(ops) ^ set(RULES)}"
    tried = 0
    for method, template in ops:
        rule = RULES[method, template]
        for token, expect in ((None, 401), ("not-a-token", 401), ("x" * 5000, 401)):
            if rule == "public":
                continue
            resp = call(cdp_server, method, template, token, "alpha", point.point_id)
            assert resp.status_code == expect, (method, template, token, resp.text)
            tried += 1
        if rule == "public":
            continue
        if "{host}" not in template:
            for role in (Role.agent, Role.restore):
                resp = call(cdp_server, method, template, alpha[role], "alpha", point.point_id)
                if role in ALLOWED[rule]:
                    assert resp.status_code == 200, (method, template, role, resp.text)
                else:
                    assert resp.status_code == 403, (method, template, role, resp.text)
                tried += 1
            continue
        for role in (Role.agent, Role.restore):
            # another host's token: its existence is not revealed (404, not 403)
            resp = call(cdp_server, method, template, beta[role], "alpha", point.point_id,
                        chunk, commit)
            assert resp.status_code == 404, (method, template, "beta", role, resp.text)
            assert resp.json()["detail"] == "no host 'alpha'"
            # own host, wrong role: 403
            resp = call(cdp_server, method, template, alpha[role], "alpha", point.point_id,
                        chunk, commit)
            if role not in ALLOWED[rule]:
                assert resp.status_code == 403, (method, template, role, resp.text)
            else:
                # allowed: served (a different key is refused, as keys never change)
                assert resp.status_code < 400 or (method, template, resp.status_code) == (
                    "PUT", "/hosts/{host}/key", 409), (method, template, role, resp.text)
            tried += 2
    # nothing the refused calls tried took effect
    admin = cdp_server.admin()
    assert [p.point_id for p in admin.points("alpha")] == [point.point_id]
    assert admin.get_key("alpha") == key
    assert admin.get_retention("alpha").keep_last == 0
    assert sorted(h.name for h in admin.hosts()) == ["alpha", "beta"]
    for role in (Role.agent, Role.restore):  # no token was replaced or revoked
        assert len(cdp_server.client(alpha[role]).points("alpha")) == 1
    record("access_control", operations=len(ops), calls=tried)


def test_agent_token_cannot_overwrite_the_key_delete_or_prune(cdp_server: Any) -> None:
    tokens = cdp_server.add_host("web")
    agent = cdp_server.client(tokens[Role.agent])
    key = WrappedKey.create(new_master_key(), "pw", n=2**10).to_json()
    assert agent.put_key("web", key) is True
    assert agent.put_key("web", key) is False  # the same key again: idempotent
    other = WrappedKey.create(new_master_key(), "evil", n=2**10).to_json()
    resp = call(cdp_server, "PUT", "/hosts/{host}/key", tokens[Role.agent], "web", "0" * 32)
    assert resp.status_code == 409, resp.text
    with pytest.raises(Exception, match="409"):
        agent.put_key("web", other)
    assert cdp_server.admin().get_key("web") == key


def test_a_removed_host_takes_no_rules_or_key_for_its_successor(cdp_server: Any) -> None:
    """A removed host's retention rules and key are deleted: the admin API must not store
    new ones on it (they used to be taken with 200 and inherited by the host enrolled
    afresh under that name: keep_last 1 pruned its history, a stale key refused its own)."""
    cdp_server.add_host("gone")
    admin = cdp_server.admin_token
    assert call_json(cdp_server, "DELETE", "/hosts/gone", admin).status_code == 200
    resp = call_json(cdp_server, "PUT", "/hosts/gone/retention", admin, {"keep_last": 1})
    assert resp.status_code == 404 and "removed" in resp.json()["detail"], resp.text
    stale = WrappedKey.create(new_master_key(), "stale", n=2**10).to_json()
    resp = call_json(cdp_server, "PUT", "/hosts/gone/key", admin, stale)
    assert resp.status_code == 404 and "removed" in resp.json()["detail"], resp.text
    resp = call_json(cdp_server, "POST", "/hosts/gone/chunks/missing", admin,
                     {"ids": ["1" * 64]})
    assert resp.status_code == 404, resp.text
    resp = requests.post(cdp_server.url + API_PREFIX + "/hosts/gone/chunks", data=b"",
                         headers={"Authorization": f"Bearer {admin}",
                                  "Content-Type": records.CURRENT.media_type},
                         verify=str(cdp_server.ca_path), timeout=30)
    assert resp.status_code == 404, resp.text
    tokens = cdp_server.add_host("gone")  # enrolled afresh: no rules, no key
    fresh = cdp_server.client(tokens[Role.agent])
    assert cdp_server.admin().get_retention("gone").keep_last == 0
    key = WrappedKey.create(new_master_key(), "pw", n=2**10).to_json()
    assert fresh.put_key("gone", key) is True


def call_json(server: Any, method: str, path: str, token: str,
              body: Any = None) -> requests.Response:
    return requests.request(method, server.url + API_PREFIX + path, json=body,
                            headers={"Authorization": f"Bearer {token}"},
                            verify=str(server.ca_path), timeout=30)


def test_secrets_never_reach_the_logs(cdp_server: Any, tmp_path: Path) -> None:
    tokens = cdp_server.add_host("quiet")
    passphrase = "tr0ub4dor-passphrase-xyz"
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(2 * 1024 * 1024))
    conf = tmp_path / "agent.toml"
    env = {**os.environ, "CDP_PASSPHRASE": passphrase}
    init = subprocess.run([sys.executable, "-m", "hotcopy", "-v", "init", "--server",
                           cdp_server.url, "--token", tokens[Role.agent], "--host", "quiet",
                           "--ca", str(cdp_server.ca_path), "--source", str(image),
                           "--state-dir", str(tmp_path / "state"), "--config", str(conf)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert init.returncode == 0, init.stderr
    backup = subprocess.run([sys.executable, "-m", "hotcopy", "-v", "backup", "--config",
                             str(conf)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert backup.returncode == 0, backup.stderr
    # a failing call with a bad token: errors are where secrets tend to leak
    bad = CdpClient(cdp_server.url, "leaky-token-123456", ca_path=str(cdp_server.ca_path))
    with pytest.raises(Exception, match="401"):
        bad.points("quiet")
    master_rk = agentconf.load(conf).recovery_key
    logs = {"server": cdp_server.log(), "agent init": init.stdout + init.stderr,
            "agent backup": backup.stdout + backup.stderr}
    secrets = {"agent token": tokens[Role.agent], "restore token": tokens[Role.restore],
               "admin token": cdp_server.admin_token, "passphrase": passphrase,
               "bad token": "leaky-token-123456", "recovery key": master_rk,
               "recovery key body": master_rk.split("-", 2)[2][:20]}
    for where, text in logs.items():
        assert text, f"{where} log is empty: nothing was checked"
        for what, secret in secrets.items():
            assert secret not in text, f"the {what} appears in the {where} log"
    assert "request" in logs["server"]  # the server did log the requests
    record("access_secrets_in_logs", logs=len(logs), secrets=len(secrets),
           log_bytes=sum(len(t) for t in logs.values()))


def test_tls_is_verified_by_default_and_pinning_is_enforced(cdp_server: Any) -> None:
    tokens = cdp_server.add_host("tls")
    # No CA given: the self-signed certificate is not trusted.
    with pytest.raises(ConnectionFailed, match="TLS check"):
        CdpClient(cdp_server.url, tokens[Role.restore], retries=0).points("tls")
    pinned = CdpClient(cdp_server.url, tokens[Role.restore], fingerprint=cdp_server.fingerprint)
    assert pinned.points("tls") == []
    colons = ":".join(cdp_server.fingerprint[i:i + 2]
                      for i in range(0, len(cdp_server.fingerprint), 2)).upper()
    assert CdpClient(cdp_server.url, tokens[Role.restore], fingerprint=colons).points("tls") == []
    wrong = "00" * 32
    with pytest.raises(ConnectionFailed, match="TLS check") as exc:
        CdpClient(cdp_server.url, tokens[Role.restore], fingerprint=wrong,
                  retries=0).points("tls")
    assert "fingerprint" in str(exc.value).lower()
    # the agent CLI refuses a plain-HTTP server URL outright
    with pytest.raises(Exception, match="https://"):
        agentconf.AgentConfig(server=cdp_server.url.replace("https", "http"), token="t",
                              host="h", recovery_key="").check()
