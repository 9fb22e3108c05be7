"""Role isolation over HTTPS against the real server process."""

from __future__ import annotations

import os
import select
import socket
import socketserver
import threading

import pytest
import requests

from cdpcore.api import API_PREFIX, ObjectKind, Retention, Role
from cdpcore.client import CdpClient
from cdpcore.errors import AuthError, ConnectionFailed, NotFoundError, ServerError
from cdpcore.keys import WrappedKey, new_master_key

from .points import build_point, new_codec, push
from .stored import object_counts


def _raw(server, method: str, path: str, token: str | None = None, **kw):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.request(method, server.url + API_PREFIX + path, headers=headers,
                            verify=str(server.ca_path), timeout=30, **kw)


def test_no_token_and_bad_token_are_401(cdp_server) -> None:  # type: ignore[no-untyped-def]
    cdp_server.add_host("web1")
    for path in ("/hosts", "/hosts/web1", "/hosts/web1/points"):
        assert _raw(cdp_server, "GET", path).status_code == 401
        resp = _raw(cdp_server, "GET", path, "not-a-token")
        assert resp.status_code == 401
        assert resp.json()["detail"] == "invalid token"
    with pytest.raises(AuthError) as exc:
        cdp_server.client("wrong").hosts()
    assert exc.value.status == 401


def test_a_netrc_entry_for_the_server_does_not_replace_the_token(
        cdp_server, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """requests puts a ~/.netrc entry for the host in place of a plain Authorization
    header: an admin's workstation with one would send Basic auth and get 401."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login admin password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    tokens = cdp_server.add_host("web1")
    assert [h.name for h in cdp_server.client(tokens[Role.restore]).hosts()] == ["web1"]


def test_health_needs_no_token(cdp_server) -> None:  # type: ignore[no-untyped-def]
    assert _raw(cdp_server, "GET", "/health").json()["status"] == "ok"


def test_other_hosts_are_invisible(cdp_server) -> None:  # type: ignore[no-untyped-def]
    a = cdp_server.add_host("alpha")
    b = cdp_server.add_host("beta")
    codec = new_codec()
    point = push(cdp_server.client(b[Role.agent]), "beta", build_point(
        codec, "beta", {"disk": os.urandom(3 * 4096)}))
    for role in (Role.agent, Role.restore):
        client = cdp_server.client(a[role])
        assert [h.name for h in client.hosts()] == ["alpha"]
        with pytest.raises(NotFoundError):
            client.host("beta")
        with pytest.raises(NotFoundError):
            client.points("beta")
        with pytest.raises(NotFoundError):
            client.point("beta", point.point_id)
        with pytest.raises(NotFoundError):
            client.fetch("beta", ObjectKind.chunks, [bytes(31) + b"\1"])
        # an unknown host looks exactly like another host's
        with pytest.raises(NotFoundError) as exc:
            client.points("gamma")
        assert "no host 'gamma'" in str(exc.value)
    assert sorted(h.name for h in cdp_server.admin().hosts()) == ["alpha", "beta"]


def test_restore_token_reads_only(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    codec = new_codec()
    built = build_point(codec, "web1", {"disk": os.urandom(2 * 4096)})
    push(cdp_server.client(tokens[Role.agent]), "web1", built)
    restore = cdp_server.client(tokens[Role.restore])
    assert [p.point_id for p in restore.points("web1")] == [built.point_id]
    with pytest.raises(AuthError) as exc:
        restore.upload("web1", ObjectKind.chunks, list(built.chunks.items()))
    assert exc.value.status == 403
    with pytest.raises(AuthError):
        restore.missing("web1", ObjectKind.chunks, list(built.chunks))
    with pytest.raises(AuthError):
        restore.commit("web1", built.request)
    with pytest.raises(AuthError):
        restore.put_key("web1", WrappedKey.create(new_master_key(), "pw", n=2**10).to_json())


def test_agent_can_never_delete_or_overwrite(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    built = build_point(new_codec(), "web1", {"disk": os.urandom(2 * 4096)})
    push(agent, "web1", built)
    forbidden = [
        lambda: agent.delete_point("web1", built.point_id),
        lambda: agent.unpin("web1", built.point_id),
        lambda: agent.pin("web1", built.point_id),
        lambda: agent.set_retention("web1", Retention(keep_last=1)),
        lambda: agent.prune("web1"),
        lambda: agent.gc(),
        lambda: agent.verify(),
        lambda: agent.create_host("evil"),
    ]
    for call in forbidden:
        with pytest.raises(AuthError) as exc:
            call()
        assert exc.value.status == 403
    key = WrappedKey.create(new_master_key(), "pw", n=2**10).to_json()
    assert agent.put_key("web1", key) is True
    assert agent.put_key("web1", key) is False  # identical: fine, 200
    other = WrappedKey.create(new_master_key(), "pw", n=2**10).to_json()
    with pytest.raises(ServerError) as exc2:
        agent.put_key("web1", other)
    assert exc2.value.status == 409
    assert "never overwritten" in str(exc2.value)
    assert agent.get_key("web1") == key
    # a different content under the same point ID is refused, not overwritten
    again = build_point(new_codec(), "web1", {"disk": os.urandom(4096)},
                        point_id=built.point_id)
    with pytest.raises(ServerError) as exc3:
        push(agent, "web1", again)
    assert exc3.value.status == 409
    assert [p.point_id for p in agent.points("web1")] == [built.point_id]


def test_a_reissued_token_replaces_the_old_one_at_once(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    other = cdp_server.add_host("web2")
    built = build_point(new_codec(), "web1", {"disk": os.urandom(2 * 4096)})
    push(cdp_server.client(tokens[Role.agent]), "web1", built)
    issued = cdp_server.admin().reissue_token("web1", Role.agent)
    assert (issued.host, issued.role, issued.revoked) == ("web1", Role.agent, 1)
    with pytest.raises(AuthError) as exc:
        cdp_server.client(tokens[Role.agent]).points("web1")
    assert exc.value.status == 401
    new = cdp_server.client(issued.token)
    assert [p.point_id for p in new.points("web1")] == [built.point_id]
    push(new, "web1", build_point(new_codec(), "web1", {"disk": os.urandom(4096)}))
    # The host's restore token and the other host's tokens still work.
    assert len(cdp_server.client(tokens[Role.restore]).points("web1")) == 2
    assert cdp_server.client(other[Role.agent]).points("web2") == []
    # Only an admin reissues, and only agent and restore tokens of a host.
    for token in (issued.token, tokens[Role.restore]):
        with pytest.raises(AuthError) as exc:
            cdp_server.client(token).reissue_token("web1", Role.restore)
        assert exc.value.status == 403
    resp = _raw(cdp_server, "POST", "/hosts/web1/tokens", cdp_server.admin_token,
                json={"role": "admin"})
    assert resp.status_code == 422
    assert "admin tokens belong to no host" in resp.json()["detail"]
    with pytest.raises(NotFoundError):
        cdp_server.admin().reissue_token("nobody", Role.agent)


def test_a_removed_host_loses_its_tokens_points_and_key_and_can_be_enrolled_again(
        cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    agent, admin = cdp_server.client(tokens[Role.agent]), cdp_server.admin()
    agent.put_key("web1", WrappedKey.create(new_master_key(), "pw", n=2**10).to_json())
    codec = new_codec()
    first, second = (push(agent, "web1", build_point(codec, "web1", {"disk": os.urandom(4 * 4096)}))
                     for _ in range(2))
    admin.pin("web1", first.point_id)
    other = cdp_server.add_host("web2")
    kept = push(cdp_server.client(other[Role.agent]), "web2",
                build_point(new_codec(), "web2", {"disk": os.urandom(4096)}))
    with pytest.raises(AuthError) as exc:
        agent.remove_host("web1")  # agents never delete
    assert exc.value.status == 403

    assert admin.remove_host("web1") == 2  # the pinned point too
    for token in tokens.values():
        with pytest.raises(AuthError) as exc:
            cdp_server.client(token).points("web1")
        assert exc.value.status == 401
    info = admin.host("web1")
    assert (info.points, info.has_key, info.retired) == (0, False, True)
    with pytest.raises(NotFoundError):
        admin.reissue_token("web1", Role.agent)  # no way back in but enrolling again
    with pytest.raises(NotFoundError):
        admin.remove_host("web1")
    with pytest.raises(NotFoundError) as gone:  # a commit that got past its token check
        push(admin, "web1", build_point(codec, "web1", {"disk": os.urandom(4096)}))
    assert "host 'web1' was removed" in str(gone.value)
    assert object_counts(cdp_server.data_dir, "web1")["chunks"] > 0
    admin.gc(grace=0)
    assert object_counts(cdp_server.data_dir, "web1") == {}
    assert [p.point_id for p in admin.points("web2")] == [kept.point_id]

    again = admin.create_host("web1").tokens  # the name is free again
    fresh = cdp_server.client(again[Role.agent])
    assert (fresh.points("web1"), fresh.get_key("web1")) == ([], None)
    assert not admin.host("web1").retired
    with pytest.raises(AuthError):
        cdp_server.client(tokens[Role.agent]).points("web1")
    assert second.point_id not in {p.point_id for p in admin.points("web1")}


def test_get_key_absent_is_none(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    assert cdp_server.client(tokens[Role.restore]).get_key("web1") is None


def _pin_refusal(server) -> str:  # type: ignore[no-untyped-def]
    """Connect pinned to the server's fingerprint (must work), then to another one (must be
    refused); the refusal's message."""
    pinned = CdpClient(server.url, server.admin_token, fingerprint=server.fingerprint,
                       retries=0)
    assert pinned.health().status == "ok"
    wrong = CdpClient(server.url, server.admin_token, fingerprint="00" * 32, retries=0)
    with pytest.raises(ConnectionFailed) as exc:
        wrong.hosts()
    return str(exc.value)


def test_fingerprint_pinning(cdp_server) -> None:  # type: ignore[no-untyped-def]
    assert "TLS check" in _pin_refusal(cdp_server)
    # without the CA file or a pin, a self-signed server is refused
    with pytest.raises(ConnectionFailed):
        CdpClient(cdp_server.url, cdp_server.admin_token, retries=0).health()


def test_unreachable_server_is_connection_failed(cdp_server) -> None:  # type: ignore[no-untyped-def]
    client = cdp_server.client(cdp_server.admin_token, retries=1, backoff=0.01)
    cdp_server.kill()
    with pytest.raises(ConnectionFailed) as exc:
        client.hosts()
    assert "cannot reach the CDP server" in str(exc.value)


def test_fingerprint_pinning_holds_through_a_proxy(cdp_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Through HTTPS_PROXY, requests takes its connections from a proxy manager: the pin
    must be checked there too, else (verify off when pinning) nothing is checked."""
    class Tunnel(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            head = b""
            while b"\r\n\r\n" not in head:
                head += self.request.recv(4096)
            target, port = head.split()[1].decode().rsplit(":", 1)
            with socket.create_connection((target, int(port))) as up:
                self.request.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
                while True:
                    ready, _, _ = select.select([self.request, up], [], [], 5)
                    if not ready:
                        return
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            return
                        (up if s is self.request else self.request).sendall(data)

    class Proxy(socketserver.ThreadingTCPServer):
        daemon_threads = True

    with Proxy(("127.0.0.1", 0), Tunnel) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert "Fingerprints did not match" in _pin_refusal(cdp_server)
        proxy.shutdown()
