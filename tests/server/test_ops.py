"""Operations: the CLI, configuration file, metrics, OpenAPI, logs, a full disk."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from cdpcore import records
from cdpcore.api import API_PREFIX, ObjectKind, Retention, Role
from cdpcore.errors import ServerError, UsageError

from .points import BS, build_point, new_codec, push

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdp_server", *args], cwd=REPO,
                          capture_output=True, text=True, check=check, timeout=120)


def test_cli_admin_commands(tmp_path: Path) -> None:
    data = str(tmp_path / "ds")
    token = json.loads(_cli("init", "--data", data, "--json").stdout)["admin_token"]
    assert len(token) >= 40
    again = _cli("init", "--data", data, check=False)
    assert again.returncode == 2
    assert "already holds a CDP datastore" in again.stderr
    added = json.loads(_cli("host", "add", "db1", "--data", data, "--json").stdout)
    assert set(added["tokens"]) == {"agent", "restore"}
    dup = _cli("host", "add", "db1", "--data", data, check=False)
    assert dup.returncode == 6
    assert "host 'db1' already exists" in dup.stderr
    for name in ("../etc", "a/b"):
        bad = _cli("host", "add", name, "--data", data, check=False)
        assert bad.returncode == 2
        assert f"invalid host name {name!r}" in bad.stderr
    assert json.loads(_cli("host", "list", "--data", data, "--json").stdout) == [
        {"name": "db1", "points": 0, "latest": None, "has_key": False, "retired": False}]
    rules = json.loads(_cli("retention", "set", "db1", "--keep-last", "3", "--keep-daily",
                            "7", "--data", data, "--json").stdout)
    assert rules == Retention(keep_last=3, keep_daily=7).model_dump()
    assert json.loads(_cli("prune", "--data", data, "--json").stdout) == {"kept": [],
                                                                         "removed": []}
    gc = json.loads(_cli("gc", "--grace", "0", "--data", data, "--json").stdout)
    assert gc["removed_chunks"] == 0
    verify = json.loads(_cli("verify", "--data", data, "--json").stdout)
    assert verify["damaged_points"] == []
    status = json.loads(_cli("status", "--data", data, "--json").stdout)
    assert (status["hosts"], status["points"]) == (1, 0)
    missing = _cli("status", "--data", str(tmp_path / "nothing"), check=False)
    assert missing.returncode == 2
    assert "is not a CDP datastore: run `cdp-server init" in missing.stderr
    for cmd in ("serve", "init", "cert", "host", "retention", "prune", "gc", "verify",
                "status", "admin-token", "point"):
        assert _cli(cmd, "--help").returncode == 0


def test_cli_reissues_tokens_under_a_running_server(cdp_server) -> None:  # type: ignore[no-untyped-def]
    """A leaked token is replaced on the datastore while the server runs: the old one
    fails at its next request."""
    data = str(cdp_server.data_dir)
    tokens = cdp_server.add_host("db1")
    out = _cli("host", "token", "db1", "--role", "restore", "--data", data, "--json")
    issued = json.loads(out.stdout)
    assert (issued["host"], issued["role"], issued["revoked"]) == ("db1", "restore", 1)
    with pytest.raises(ServerError) as exc:
        cdp_server.client(tokens[Role.restore]).points("db1")
    assert exc.value.status == 401
    assert cdp_server.client(issued["token"]).points("db1") == []
    assert cdp_server.client(tokens[Role.agent]).points("db1") == []

    text = _cli("admin-token", "--data", data).stdout
    new_admin = text.split("new admin token of the server: ", 1)[1].split()[0]
    assert "1 old admin token(s) revoked" in text
    with pytest.raises(ServerError) as exc:
        cdp_server.admin().hosts()
    assert exc.value.status == 401
    assert [h.name for h in cdp_server.client(new_admin).hosts()] == ["db1"]

    unknown = _cli("host", "token", "nobody", "--role", "agent", "--data", data, check=False)
    assert (unknown.returncode, unknown.stderr) == (7, "cdp-server: error: no host 'nobody'\n")
    bad_role = _cli("host", "token", "db1", "--role", "admin", "--data", data, check=False)
    assert bad_role.returncode == 2


def test_cli_lists_pins_and_deletes_points(cdp_server) -> None:  # type: ignore[no-untyped-def]
    data = str(cdp_server.data_dir)
    tokens = cdp_server.add_host("db1")
    agent = cdp_server.client(tokens[Role.agent])
    codec = new_codec()
    old, new = (push(agent, "db1", build_point(codec, "db1", {"disk": os.urandom(2 * BS)},
                                               created=at))
                for at in (1_790_000_000.0, 1_790_003_600.0))
    listed = json.loads(_cli("point", "list", "db1", "--data", data, "--json").stdout)
    assert [p["point_id"] for p in listed] == [old.point_id, new.point_id]
    text = _cli("point", "list", "db1", "--data", data).stdout.splitlines()
    assert [line.split()[0] for line in text] == [old.point_id, new.point_id]

    # A point is named as everywhere else: a prefix, 'latest', or a time.
    pinned = json.loads(_cli("point", "pin", "db1", old.point_id[:8], "--data", data,
                             "--json").stdout)
    assert pinned == {"point_id": old.point_id, "pinned": True}
    cdp_server.admin().set_retention("db1", Retention(keep_last=1))
    assert json.loads(_cli("prune", "--data", data, "--json").stdout)["removed"] == []
    assert [(p.point_id, p.pinned) for p in agent.points("db1")] == [
        (old.point_id, True), (new.point_id, False)]
    _cli("point", "unpin", "db1", old.point_id, "--data", data)
    assert not agent.points("db1")[0].pinned

    for answer in ("n\n", ""):  # no, and the end of the input
        refused = subprocess.run([sys.executable, "-m", "cdp_server", "point", "delete",
                                  "db1", "latest", "--data", data], cwd=REPO, input=answer,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2
        assert refused.stderr.endswith("cdp-server: error: not confirmed: nothing was changed\n")
    assert len(agent.points("db1")) == 2
    gone = json.loads(_cli("point", "delete", "db1", "latest", "--yes", "--data", data,
                           "--json").stdout)
    assert gone == {"deleted": new.point_id}
    assert [p.point_id for p in agent.points("db1")] == [old.point_id]

    unknown = _cli("point", "list", "db9", "--data", data, check=False)
    assert (unknown.returncode, unknown.stderr) == (7, "cdp-server: error: no host 'db9'\n")
    nothing = _cli("point", "pin", "db1", "ffffffff", "--data", data, check=False)
    assert nothing.returncode == 7
    assert "ffffffff" in nothing.stderr


def test_cli_removes_a_host_after_asking(cdp_server) -> None:  # type: ignore[no-untyped-def]
    data = str(cdp_server.data_dir)
    tokens = cdp_server.add_host("db1")
    push(cdp_server.client(tokens[Role.agent]), "db1",
         build_point(new_codec(), "db1", {"disk": os.urandom(2 * BS)}))
    refused = subprocess.run([sys.executable, "-m", "cdp_server", "host", "remove", "db1",
                              "--data", data], cwd=REPO, input="n\n", capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.startswith("remove host db1 and delete its 1 points? [y/N]: ")
    assert refused.stderr.endswith("cdp-server: error: not confirmed: nothing was changed\n")
    assert len(cdp_server.client(tokens[Role.agent]).points("db1")) == 1
    done = json.loads(_cli("host", "remove", "db1", "--yes", "--data", data, "--json").stdout)
    assert done == {"removed": "db1", "points_deleted": 1}
    with pytest.raises(ServerError) as exc:
        cdp_server.client(tokens[Role.agent]).points("db1")
    assert exc.value.status == 401
    assert _cli("host", "list", "--data", data).stdout == "db1\t0 points\tremoved\n"
    again = _cli("host", "remove", "db1", "--yes", "--data", data, check=False)
    assert (again.returncode, again.stderr) == (7, "cdp-server: error: no host 'db1'\n")
    added = json.loads(_cli("host", "add", "db1", "--data", data, "--json").stdout)
    assert cdp_server.client(added["tokens"]["agent"]).points("db1") == []


def test_cert_fingerprint(tmp_path: Path) -> None:
    from cdp_server.tls import fingerprint_of

    doc = json.loads(_cli("cert", "--out", str(tmp_path), "--name", "backup.example",
                          "--json").stdout)
    assert doc["fingerprint"] == fingerprint_of(Path(doc["cert"]))
    # A directory that cannot be made was a traceback (exit 1).
    (tmp_path / "file").write_text("")
    bad = _cli("cert", "--out", str(tmp_path / "file" / "tls"), check=False)
    assert (bad.returncode, bad.stderr) == (
        2, f"cdp-server: error: cannot write the certificate to {tmp_path}/file/tls: Not a "
        "directory\n")
    assert oct(os.stat(doc["key"]).st_mode & 0o777) == "0o600"


def test_serve_reads_a_config_file_and_flags_win(tmp_path: Path, server_cert) -> None:  # type: ignore[no-untyped-def]
    from cdp_server import config

    path = tmp_path / "server.toml"
    path.write_text(f'[server]\ndata = "{tmp_path}/ds"\nlisten = "127.0.0.1:9"\n'
                    f'cert = "{server_cert["cert"]}"\nkey = "{server_cert["key"]}"\n'
                    "grace = 60\n")
    conf = config.load(path).merged(listen="127.0.0.1:8555", grace=None)
    assert conf.address() == ("127.0.0.1", 8555)
    assert conf.grace == 60.0
    ini = tmp_path / "server.ini"
    ini.write_text("[server]\nlisten = 127.0.0.1:7000\nbogus = 1\n")
    with pytest.raises(Exception, match="unknown settings bogus"):
        config.load(ini)
    no_cert = _cli("serve", "--data", str(tmp_path / "ds"), check=False)
    assert no_cert.returncode == 2
    assert "HTTPS needs --cert and --key" in no_cert.stderr


def test_a_negative_gc_grace_is_refused_everywhere(tmp_path: Path) -> None:
    """A negative grace (or NaN, which compares false with every time) would let gc sweep
    the objects of uploads in flight: the API refuses it, and so must the CLI's gc and
    serve and the configuration file."""
    from cdp_server import config

    data = str(tmp_path / "ds")
    _cli("init", "--data", data)
    _cli("host", "add", "web1", "--data", data)
    for value in ("-1", "-0.5", "nan", "-inf"):
        for args in (("gc", "--data", data), ("serve", "--data", data)):
            bad = _cli(*args, "--grace", value, check=False)
            assert bad.returncode == 2, (args, value, bad.stderr)
            assert "Invalid value for '--grace'" in bad.stderr
    for name, text in (("a.toml", "grace = -1\n"), ("b.toml", "grace = nan\n"),
                       ("c.ini", "[server]\ngrace = -3600\n")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(UsageError, match=f"configuration file {path}: grace must be 0 "
                           "or more seconds"):
            config.load(path)
    assert _cli("gc", "--grace", "0", "--data", data).returncode == 0


def _unit_runs(unit: str) -> list[str]:
    """The `ExecStart=` command lines of one of the server's units."""
    text = (REPO / "cdp_server" / unit).read_text()
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart=")]


def test_every_server_unit_takes_its_datastore_from_the_configuration_file() -> None:
    """One place names the datastore: a `--data` in a maintenance unit was one more
    place to change when the datastore moves, and one to forget."""
    runs = [run.split() for unit in ("cdp-server.service", "cdp-server-maintenance.service",
                                     "cdp-server-verify.service") for run in _unit_runs(unit)]
    assert [(argv[0], argv[1], argv[2:]) for argv in runs] == [
        ("/usr/local/bin/cdp-server", command, ["--config", "/etc/cdp-server/server.toml"])
        for command in ("serve", "prune", "gc", "verify")]


def test_the_admin_commands_take_the_datastore_of_the_configuration_file(
        tmp_path: Path) -> None:
    data = tmp_path / "ds"
    conf = tmp_path / "server.toml"
    conf.write_text(f'[server]\ndata = "{data}"\n')
    _cli("init", "--config", str(conf))
    _cli("host", "add", "web1", "--config", str(conf))
    listed = json.loads(_cli("host", "list", "--config", str(conf), "--json").stdout)
    assert [h["name"] for h in listed] == ["web1"]
    for run in _unit_runs("cdp-server-verify.service"):
        _cli(*run.replace("/etc/cdp-server/server.toml", str(conf)).split()[1:])
    # --data wins over the file
    other = _cli("host", "list", "--config", str(conf), "--data", str(tmp_path / "x"),
                 check=False)
    x = tmp_path / "x"
    assert (other.returncode, other.stderr) == (2, f"cdp-server: error: {x} is not a CDP "
                                                f"datastore: run `cdp-server init --data {x}` "
                                                "first\n")
    empty = tmp_path / "empty.toml"
    empty.write_text("[server]\n")
    none = _cli("host", "list", "--config", str(empty), check=False)
    assert (none.returncode, none.stderr) == (2, "cdp-server: error: no datastore: give "
                                              "--data or `data` in the configuration file\n")


def test_the_scheduled_gc_keeps_the_grace_of_the_configuration_file(tmp_path: Path) -> None:
    """The server never collects by itself: the maintenance unit's `gc` is the gc that
    runs. It must spare what the configured `grace` spares (an operator whose uploads take
    longer than a day sets it longer), not the built-in 24 h of `gc --grace`."""
    from cdp_server.datastore import Datastore

    data = tmp_path / "ds"
    ds, _ = Datastore.init(data)
    ds.add_host("web1")
    codec = new_codec()
    fresh = [codec.seal_block(os.urandom(BS)) for _ in range(3)]
    ds.upload("web1", ObjectKind.chunks, records.encode_records(fresh))  # type: ignore[arg-type]
    db = sqlite3.connect(data / "catalog.sqlite")
    with db:  # asked about by a backup 30 hours ago that is still uploading
        db.execute("UPDATE objects SET seen = ?", (time.time() - 30 * 3600,))
    db.close()
    conf = tmp_path / "server.toml"
    conf.write_text(f'[server]\ndata = "{data}"\ngrace = 172800\n')
    for run in _unit_runs("cdp-server-maintenance.service"):
        _cli(*run.replace("/etc/cdp-server/server.toml", str(conf)).split()[1:])
    assert ds.catalog.present("web1", ObjectKind.chunks, [c for c, _ in fresh]) == {
        c for c, _ in fresh}
    # `--grace` still wins over the file, and without a file the default holds.
    gone = json.loads(_cli("gc", "--config", str(conf), "--grace", "3600", "--data",
                           str(data), "--json").stdout)
    assert gone["removed_chunks"] == 3


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_logs_its_stop_and_exits_0(make_cdp_server, stop: int) -> None:  # type: ignore[no-untyped-def]
    """uvicorn raises the signal again once it has stopped: SIGTERM (systemd's stop) ended
    the process there, with status 143 and no "stopped" line."""
    server = make_cdp_server()
    assert server.proc is not None
    server.proc.send_signal(stop)
    assert server.proc.wait(timeout=30) == 0
    events = [json.loads(line).get("msg") for line in server.log().splitlines()
              if line.startswith("{")]
    assert events[-1] == "stopped", events[-3:]


def test_metrics_openapi_and_logs(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    push(agent, "web1", build_point(new_codec(), "web1", {"vda": os.urandom(8 * BS)}))
    with pytest.raises(ServerError):
        cdp_server.client("bogus-token").hosts()
    base = cdp_server.url + API_PREFIX
    text = requests.get(base + "/metrics", verify=str(cdp_server.ca_path), timeout=30).text
    assert 'cdp_objects_stored_total{kind="chunks"} 8.0' in text
    assert "cdp_points_committed_total 1.0" in text
    assert 'cdp_errors_total{status="401"}' in text
    assert "cdp_request_duration_seconds_bucket" in text
    schema = requests.get(cdp_server.url + "/openapi.json", verify=str(cdp_server.ca_path),
                          timeout=30).json()
    assert "/api/v1/hosts/{host}/points" in schema["paths"]
    log = cdp_server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line.get("path") == "/api/v1/hosts/web1/points" for line in lines)
    for secret in (*tokens.values(), cdp_server.admin_token, "bogus-token"):
        assert secret not in log


def test_full_disk_is_507_and_leaves_nothing_half_done(
        make_cdp_server, small_fs) -> None:  # type: ignore[no-untyped-def]
    small = small_fs(3)
    server = make_cdp_server(data_dir=small / "ds")
    tokens = server.add_host("web1")
    agent = server.client(tokens[Role.agent], retries=0)
    codec = new_codec()
    first = build_point(codec, "web1", {"vda": os.urandom(16 * BS)})
    push(agent, "web1", first)
    big = build_point(codec, "web1", {"vda": os.urandom(1000 * BS)})  # ~4 MiB
    with pytest.raises(ServerError) as exc:
        agent.upload("web1", ObjectKind.chunks, list(big.chunks.items()))
    assert exc.value.status == 507
    assert "the datastore is full" in str(exc.value)
    assert agent.missing("web1", ObjectKind.chunks, list(big.chunks)) == set(big.chunks)
    with pytest.raises(ServerError) as exc2:
        agent.commit("web1", big.request)
    assert exc2.value.status == 409
    assert [p.point_id for p in agent.points("web1")] == [first.point_id]
    assert not list((small / "ds" / "objects" / "tmp").iterdir())
    # space is usable again: the failed pack was removed at once
    second = build_point(codec, "web1", {"vda": os.urandom(16 * BS)})
    push(agent, "web1", second)
    assert len(agent.points("web1")) == 2


def test_configuration_mistakes_are_named_not_ignored(tmp_path: Path, server_cert) -> None:  # type: ignore[no-untyped-def]
    """A log level the server has no name for was a traceback at start; settings beside
    the [server] table of a TOML file, or an INI file without a [server] section, were
    silently ignored."""
    from cdp_server import config

    data = str(tmp_path / "ds")
    _cli("init", "--data", data)
    path = tmp_path / "server.toml"
    path.write_text(f'[server]\ndata = "{data}"\nlisten = "127.0.0.1:9"\n'
                    f'cert = "{server_cert["cert"]}"\nkey = "{server_cert["key"]}"\n'
                    'log_level = "verbose"\n')
    bad = _cli("serve", "--config", str(path), check=False)
    assert (bad.returncode, bad.stderr) == (
        2, f"cdp-server: error: configuration file {path}: log_level must be one of debug, "
        "info, warning, error, not 'verbose'\n")
    beside = tmp_path / "beside.toml"
    beside.write_text('grace = 60\nlog_level = "debug"\n[server]\ndata = "/x"\n')
    with pytest.raises(UsageError, match=r"settings outside \[server\]: grace, log_level$"):
        config.load(beside)
    ini = tmp_path / "server.ini"
    ini.write_text("[Server]\ngrace = 60\n")
    with pytest.raises(UsageError, match=rf"^configuration file {ini} has no \[server\] "
                       "section$"):
        config.load(ini)


def test_serve_refuses_a_bad_port_or_tls_pair_by_name(tmp_path: Path, server_cert) -> None:  # type: ignore[no-untyped-def]
    data = str(tmp_path / "ds")
    _cli("init", "--data", data)
    tls = ("--cert", server_cert["cert"], "--key", server_cert["key"])
    bad = _cli("serve", "--data", data, "--listen", "127.0.0.1:99999", *tls, check=False)
    assert (bad.returncode, bad.stderr) == (
        2, "cdp-server: error: listen address '127.0.0.1:99999' must be HOST:PORT (port 0 "
        "to 65535)\n")
    missing = str(tmp_path / "nothing.pem")
    bad = _cli("serve", "--data", data, "--listen", "127.0.0.1:9", "--cert", missing,
               "--key", server_cert["key"], check=False)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.startswith(f"cdp-server: error: cannot use the TLS certificate "
                                 f"{missing} with the key {server_cert['key']}: ")
    other = json.loads(_cli("cert", "--out", str(tmp_path / "other"), "--json").stdout)
    bad = _cli("serve", "--data", data, "--listen", "127.0.0.1:9", "--cert",
               server_cert["cert"], "--key", other["key"], check=False)
    assert bad.returncode == 2, bad.stderr
    assert "cannot use the TLS certificate" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_prune_of_an_unknown_or_empty_host_name_prunes_nothing(cdp_server) -> None:  # type: ignore[no-untyped-def]
    """`prune --host ""` (say `--host "$HOST"` with HOST unset) pruned every host, and a
    mistyped name pruned nothing without a word; the API answers 404 for both."""
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    codec = new_codec()
    for _ in range(2):
        push(agent, "web1", build_point(codec, "web1", {"vda": os.urandom(4 * BS)}))
    data = str(cdp_server.data_dir)
    _cli("retention", "set", "web1", "--keep-last", "1", "--data", data)
    for name in ("", "web2"):
        bad = _cli("prune", "--host", name, "--data", data, "--json", check=False)
        assert (bad.returncode, bad.stdout, bad.stderr) == (
            7, "", f"cdp-server: error: no host {name!r}\n")
    assert len(agent.points("web1")) == 2
    pruned = json.loads(_cli("prune", "--host", "web1", "--data", data, "--json").stdout)
    assert len(pruned["removed"]) == 1


def test_cert_for_an_ip_address_names_it_as_one(tmp_path: Path) -> None:
    """Clients match an address only against the IP entries of a certificate: a DNS
    entry "192.0.2.7" made the certificate useless for https://192.0.2.7 with a CA file."""
    import ipaddress

    from cryptography import x509

    doc = json.loads(_cli("cert", "--out", str(tmp_path), "--name", "192.0.2.7",
                          "--json").stdout)
    cert = x509.load_pem_x509_certificate(Path(doc["cert"]).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_unknown_methods_add_no_metric_series(cdp_server) -> None:  # type: ignore[no-untyped-def]
    """Any token is a method to HTTP/1.1: one label value per method would let anyone,
    without a token, add series to the metrics for good."""
    base = cdp_server.url + API_PREFIX
    for method in ("XA1", "XA2"):
        resp = requests.request(method, base + "/health", verify=str(cdp_server.ca_path),
                                timeout=30)
        assert resp.status_code == 405
    text = requests.get(base + "/metrics", verify=str(cdp_server.ca_path), timeout=30).text
    assert 'method="XA1"' not in text
    assert 'cdp_request_duration_seconds_count{method="other",route="/health"} 2.0' in text


def test_a_host_name_ending_in_a_newline_is_refused(cdp_server) -> None:  # type: ignore[no-untyped-def]
    """re's `$` matches before a final newline: "web3\\n" passed the name check."""
    resp = requests.post(cdp_server.url + API_PREFIX + "/hosts", json={"name": "web3\n"},
                         headers={"Authorization": f"Bearer {cdp_server.admin_token}"},
                         verify=str(cdp_server.ca_path), timeout=30)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"] == ("invalid host name 'web3\\n': use letters, digits and "
                                     "._:+/- (at most 128, no '..')")
    assert [h.name for h in cdp_server.admin().hosts()] == []


def test_a_request_head_over_16_kib_is_refused_before_it_is_read_whole(
        cdp_server) -> None:  # type: ignore[no-untyped-def]
    """The URL and headers come before any token is checked: their size must be bounded
    (h11 stops at 16 KiB; uvicorn sets httptools no bound, one reason it is not used)."""
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(cdp_server.ca_path))
    with socket.create_connection(("127.0.0.1", cdp_server.port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET " + API_PREFIX.encode() + b"/health HTTP/1.1\r\nHost: x\r\n"
                    b"X-Padding: " + b"a" * (64 * 1024))  # the head never ends
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
