"""`cdp-server` handling what an administrator gives it by mistake: a datastore path it
cannot create, a catalog it may not write, a listen address it cannot bind, retention
values and configuration settings of the wrong kind."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdp_server import cli, config
from cdpcore.errors import UsageError

from .test_ops import _cli


def test_init_on_a_file_or_where_it_may_not_write_is_named(tmp_path: Path) -> None:
    """Both were tracebacks (FileExistsError, PermissionError), exit 1."""
    taken = tmp_path / "file"
    taken.write_text("x")
    out = _cli("init", "--data", str(taken), check=False)
    assert (out.returncode, out.stderr) == (
        2, f"cdp-server: error: cannot create a datastore in {taken}: it is not a "
        "directory\n")
    out = _cli("init", "--data", str(taken / "sub"), check=False)
    assert (out.returncode, out.stderr) == (
        2, f"cdp-server: error: cannot create a datastore in {taken / 'sub'}: Not a "
        "directory\n")


def test_a_catalog_it_may_not_write_is_not_called_damaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as another user than the datastore's owner, every command said "the catalog
    database is damaged or unreadable ...: restore it from a backup" (exit 12)."""
    data = tmp_path / "ds"
    _cli("init", "--data", str(data))

    def readonly(root: Path) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(cli.Datastore, "open", readonly)
    result = CliRunner().invoke(cli.cli, ["status", "--data", str(data)])
    assert result.exit_code == 2, result.output
    assert result.output == (
        "cdp-server: error: cannot open or write the catalog database (attempt to write a "
        "readonly database): run cdp-server as the user that owns the datastore, on a writable "
        "filesystem; the catalog is not damaged\n")


def test_serve_names_an_address_it_cannot_listen_on(tmp_path: Path, server_cert) -> None:  # type: ignore[no-untyped-def]
    """A port in use or an address of no interface: uvicorn's exit 3 ("malformed data" here),
    with the reason only in a JSON log line."""
    data = str(tmp_path / "ds")
    _cli("init", "--data", data)
    tls = ("--cert", server_cert["cert"], "--key", server_cert["key"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _cli("serve", "--data", data, "--listen", f"127.0.0.1:{port}", *tls, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.endswith(f"cdp-server: error: cannot listen on 127.0.0.1:{port}: "
                               "Address already in use\n")
    # an address of no interface here (TEST-NET-1): bind fails, and no name is looked up
    # (a host name that does not resolve would send a DNS query off this machine)
    out = _cli("serve", "--data", data, "--listen", "192.0.2.1:8443", *tls, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.endswith("cdp-server: error: cannot listen on 192.0.2.1:8443: Cannot "
                               "assign requested address\n")


def test_retention_refuses_negative_counts_and_names_an_unknown_host(tmp_path: Path) -> None:
    """A negative count printed pydantic's validation report with its URL; an unknown host
    was exit 2, where every other command says 7 (not found)."""
    data = str(tmp_path / "ds")
    _cli("init", "--data", data)
    _cli("host", "add", "web1", "--data", data)
    out = _cli("retention", "set", "web1", "--keep-daily", "-1", "--data", data, check=False)
    assert out.returncode == 2, out.stderr
    assert "Invalid value for '--keep-daily': -1 is not in the range x>=0." in out.stderr
    assert "pydantic" not in out.stderr
    out = _cli("retention", "set", "web2", "--keep-last", "1", "--data", data, check=False)
    assert (out.returncode, out.stderr) == (7, "cdp-server: error: no host 'web2'\n")


@pytest.mark.parametrize(("line", "message"), [
    # read as 1.0 s: gc then swept uploads in flight after a second
    ("grace = true", "grace must be a number of seconds, not True"),
    ('grace = "a day"', "grace must be a number of seconds, not 'a day'"),
    # "['/a'] is not a CDP datastore: run `cdp-server init --data ['/a']` first"
    ('data = ["/a"]', "data must be a string, not ['/a']"),
    ("listen = 8443", "listen must be a string, not 8443"),
])
def test_toml_settings_of_the_wrong_type_are_named(tmp_path: Path, line: str,
                                                   message: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(line + "\n")
    with pytest.raises(UsageError) as err:
        config.load(path)
    assert str(err.value) == f"configuration file {path}: {message}"


def test_ini_settings_are_read_from_their_strings(tmp_path: Path) -> None:
    path = tmp_path / "server.ini"
    path.write_text("[server]\ngrace = 60\nlisten = 127.0.0.1:9\n")
    assert (config.load(path).grace, config.load(path).listen) == (60.0, "127.0.0.1:9")


def test_the_log_level_flag_takes_any_case_as_the_file_does() -> None:
    """`log_level = "WARNING"` in the file was taken, `--log-level WARNING` refused."""
    result = CliRunner().invoke(cli.cli, ["serve", "--log-level", "WARNING"])
    assert (result.exit_code, result.output) == (
        2, "cdp-server: error: no datastore: give --data or `data` in the configuration "
        "file\n")
