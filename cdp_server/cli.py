"""`cdp-server`: create a datastore, make a certificate, serve the API, and the admin jobs
(hosts, retention, prune, gc, verify, status) run directly on a datastore."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import sqlite3
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from cdpcore.api import POINT_LIST, PointInfo, Retention, Role, TokenIssued
from cdpcore.cli import run_program
from cdpcore.errors import CdpError, FormatError, NotFoundError, UsageError
from cdpcore.points import local_time, point_line, select_point

from . import config as cfgmod
from . import jobs, logs
from .datastore import Datastore
from .errors import CatalogDamaged

log = logging.getLogger("cdp.server")

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class _Seconds(click.FloatRange):
    """Seconds, 0 or more: a negative gc grace would leave uploads in flight unprotected,
    and so would NaN, which passes FloatRange (it compares false with any bound)."""

    def __init__(self) -> None:
        super().__init__(min=0)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def _configured(config_path: Path | None, data: Path | None,
                **flags: Any) -> tuple[cfgmod.ServerConfig, Path]:
    """The settings of the configuration file with the flags given applied, and the
    datastore they name: a command run by a unit takes the one file the server takes."""
    conf = cfgmod.load(config_path).merged(data=str(data) if data else None, **flags)
    if not conf.data:
        raise UsageError("no datastore: give --data or `data` in the configuration file")
    return conf, Path(conf.data)


def data_option(command: Callable[..., None]) -> Callable[..., None]:
    """`--data DIR` (or CDP_SERVER_DATA), else the `data` of `--config FILE`: the datastore
    `command` gets as `data`."""
    @click.option("--config", "config_path", type=click.Path(path_type=Path),
                  help="The server's configuration file: its `data` applies unless --data "
                  "is given.")
    @click.option("--data", "data", type=click.Path(path_type=Path), envvar="CDP_SERVER_DATA",
                  help="Datastore directory [default: CDP_SERVER_DATA, else the "
                  "configuration file's `data`].")
    @functools.wraps(command)
    def with_datastore(*args: Any, config_path: Path | None, data: Path | None,
                       **kwargs: Any) -> None:
        command(*args, data=_configured(config_path, data)[1], **kwargs)
    return with_datastore


def _emit(as_json: bool, doc: Any, text: str) -> None:
    click.echo(json.dumps(doc, indent=2, default=str) if as_json else text)


def _run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except CdpError as exc:
        click.echo(f"cdp-server: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except sqlite3.OperationalError as exc:
        # Another user than the datastore's owner, or a read-only filesystem: sqlite's
        # "attempt to write a readonly database" / "unable to open database file".
        if "readonly" not in str(exc) and "unable to open" not in str(exc):
            _damaged(exc)
        click.echo(f"cdp-server: error: cannot open or write the catalog database ({exc}): "
                   "run cdp-server as the user that owns the datastore, on a writable "
                   "filesystem; the catalog is not damaged", err=True)
        sys.exit(UsageError.exit_code)
    except sqlite3.DatabaseError as exc:
        _damaged(exc)


def _damaged(exc: sqlite3.DatabaseError) -> NoReturn:
    click.echo(f"cdp-server: error: the catalog database is damaged or unreadable "
               f"({exc}): restore it from a backup of the datastore", err=True)
    sys.exit(CatalogDamaged.exit_code)


def _confirm(question: str) -> None:
    """Ask `question` on the terminal; a no, Ctrl-C or the end of the input change nothing
    (exit 2, as the rescue's unconfirmed restore; click's own was a bare "Aborted!", 1)."""
    try:
        confirmed = click.confirm(question, err=True)
    except click.Abort:
        click.echo(err=True)
        confirmed = False
    if not confirmed:
        raise UsageError("not confirmed: nothing was changed")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """CDP server: stores block-level recovery points of protected hosts and serves them
    to the rescue environment. Start with `init`, `cert` and `serve`."""


@cli.command()
@data_option
@json_option
def init(data: Path, as_json: bool) -> None:
    """Create a datastore in DATA and print an admin token (shown once)."""
    def go() -> None:
        try:
            if data.exists() and not data.is_dir():
                raise UsageError(f"cannot create a datastore in {data}: it is not a "
                                 "directory")
            _ds, token = Datastore.init(data)
        except OSError as exc:  # a file in the path, no permission, a read-only filesystem
            raise UsageError(f"cannot create a datastore in {data}: {exc.strerror}") from None
        _emit(as_json, {"data": str(data), "admin_token": token},
              f"datastore created in {data}\nadmin token (shown once, keep it safe): {token}")
    _run(go)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory for cert.pem and key.pem.")
@click.option("--name", default="localhost", show_default=True,
              help="DNS name the certificate is valid for (plus localhost and 127.0.0.1).")
@json_option
def cert(out: Path, name: str, as_json: bool) -> None:
    """Make a self-signed TLS certificate and print its SHA-256 fingerprint, which clients
    can pin (--fingerprint) instead of trusting the file."""
    def go() -> None:
        from .tls import make_self_signed

        try:
            cert_path, key_path, fp = make_self_signed(out, name)
        except OSError as exc:  # a file in the path, no permission, a read-only filesystem
            raise UsageError(f"cannot write the certificate to {out}: {exc.strerror}") from None
        _emit(as_json, {"cert": str(cert_path), "key": str(key_path), "fingerprint": fp},
              f"certificate: {cert_path}\nkey: {key_path}\nsha256 fingerprint: {fp}")
    _run(go)


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Configuration file (TOML, or INI with a [server] section).")
@click.option("--data", type=click.Path(path_type=Path), help="Datastore directory.")
@click.option("--listen", help="HOST:PORT to listen on [default: the configuration file's, "
              f"else {cfgmod.DEFAULT_LISTEN}].")
@click.option("--cert", "cert_file", help="TLS certificate (PEM).")
@click.option("--key", "key_file", help="TLS private key (PEM).")
@click.option("--grace", type=_Seconds(), help="GC grace period in seconds [default: the "
              "configuration file's, else 86400].")
@click.option("--log-level", type=click.Choice(cfgmod.LOG_LEVELS, case_sensitive=False))
def serve(config_path: Path | None, data: Path | None, listen: str | None,
          cert_file: str | None, key_file: str | None, grace: float | None,
          log_level: str | None) -> None:
    """Serve the HTTPS API (docs/API.md)."""
    def go() -> None:
        import uvicorn

        from .app import create_app

        conf, datastore = _configured(config_path, data, listen=listen, cert=cert_file,
                                      key=key_file, grace=grace, log_level=log_level)
        if not conf.cert or not conf.key:
            raise UsageError("HTTPS needs --cert and --key (make a pair with `cdp-server "
                             "cert --out DIR`)")
        logs.setup(getattr(logging, conf.log_level.upper()))
        host, port = conf.address()
        _check_tls_pair(conf.cert, conf.key)
        _check_listen(host, port, conf.listen)
        ds = Datastore.open(datastore)
        with ds.serving():
            rec = ds.recover()
            log.info("starting", extra={"listen": conf.listen, "data": conf.data,
                                        "cleaned_pending_packs": rec.pending_packs,
                                        "cleaned_orphans": rec.orphan_objects,
                                        "cleaned_temp_files": rec.temp_files})
            # uvicorn stops on SIGTERM or SIGINT, then raises the signal again for the
            # handler it found: SIGTERM's default would end the process there, unlogged
            # and with status 143 (uvicorn.run itself swallows the KeyboardInterrupt).
            signal.signal(signal.SIGTERM, _raise_stopped)
            with contextlib.suppress(_Stopped):
                uvicorn.run(create_app(ds, grace=conf.grace), host=host, port=port,
                            ssl_certfile=conf.cert, ssl_keyfile=conf.key, log_config=None,
                            access_log=False, timeout_keep_alive=30,
                            # h11, also where httptools is installed: uvicorn sets
                            # httptools no bound on a request's URL and headers, h11 16 KiB.
                            http="h11",
                            timeout_graceful_shutdown=3)
        log.info("stopped")
        logging.shutdown()
        # Idle worker threads of the request thread pool linger for 10 s before Python
        # may exit; every transaction is committed by now, so leave at once.
        os._exit(0)
    _run(go)


class _Stopped(Exception):
    """SIGTERM, systemd's stop: a clean end of `serve` (status 0)."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped


def _check_tls_pair(cert_file: str, key_file: str) -> None:
    """A missing, unreadable or mismatched certificate or key, refused before serving (in
    uvicorn it is a traceback)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot use the TLS certificate {cert_file} with the key "
                         f"{key_file}: {exc}") from None


def _check_listen(host: str, port: int, listen: str) -> None:
    """An address in use, a host name that does not resolve or a port only root may bind,
    refused by name before serving: uvicorn exits 3 (here: malformed data) with the reason
    in a log line only."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind(addr)
    except OSError as exc:  # socket.gaierror too
        raise UsageError(f"cannot listen on {listen}: {exc.strerror}") from None


@cli.group()
def host() -> None:
    """Enrol, list and remove protected hosts, and replace their tokens."""


@host.command("add")
@click.argument("name")
@data_option
@json_option
def host_add(name: str, data: Path, as_json: bool) -> None:
    """Enrol host NAME and print its agent and restore tokens (shown once)."""
    def go() -> None:
        try:
            tokens = Datastore.open(data).add_host(name)
        except FormatError as exc:
            raise UsageError(str(exc)) from None
        _emit(as_json, {"name": name, "tokens": {r.value: t for r, t in tokens.items()}},
              f"host {name} enrolled\n" + "\n".join(f"{r.value} token: {t}"
                                                    for r, t in tokens.items()))
    _run(go)


@host.command("list")
@data_option
@json_option
def host_list(data: Path, as_json: bool) -> None:
    """List hosts with their number of points and newest point."""
    def go() -> None:
        ds = Datastore.open(data)
        rows = []
        for name in ds.catalog.host_names():
            count, latest, has_key = ds.catalog.host_summary(name)
            rows.append({"name": name, "points": count, "latest": latest, "has_key": has_key,
                         "retired": ds.catalog.host_retired(name)})
        _emit(as_json, rows, "\n".join(f"{r['name']}\t{r['points']} points"
                                       + ("\tremoved" if r["retired"] else "")
                                       for r in rows) or "no hosts")
    _run(go)


@host.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@data_option
@json_option
def host_remove(name: str, yes: bool, data: Path, as_json: bool) -> None:
    """Decommission host NAME: revoke its tokens and delete all its points (pinned ones
    too), its wrapped key and its retention rules. The next `gc` past its grace period
    frees its data; `host add NAME` enrols the name afresh. Asks first unless --yes."""
    def go() -> None:
        ds = Datastore.open(data)
        if not yes and ds.catalog.host_exists(name) and not ds.catalog.host_retired(name):
            count, _, _ = ds.catalog.host_summary(name)
            _confirm(f"remove host {name} and delete its {count} points?")
        deleted = ds.remove_host(name)
        _emit(as_json, {"removed": name, "points_deleted": deleted},
              f"host {name} removed: {deleted} points deleted, tokens revoked; "
              "`cdp-server gc` frees its data")
    _run(go)


@host.command("token")
@click.argument("name")
@click.option("--role", type=click.Choice([Role.agent.value, Role.restore.value]),
              required=True, help="Which of the host's tokens to replace.")
@data_option
@json_option
def host_token(name: str, role: str, data: Path, as_json: bool) -> None:
    """Issue a new ROLE token for host NAME and revoke its old one at once (shown once).
    For a token lost, leaked, or left on a machine that is gone; a running server honours
    the change with its next request. Give the agent its new token in its configuration
    file (`token` in /etc/cdp-agent/agent.toml), the rescue system with `--token`,
    `cdp.token=` or its answers file."""
    def go() -> None:
        ds = Datastore.open(data)
        _emit_token(as_json, name, Role(role), *ds.reissue_token(name, Role(role)))
    _run(go)


@cli.command("admin-token")
@data_option
@json_option
def admin_token(data: Path, as_json: bool) -> None:
    """Issue a new admin token and revoke every other admin token (shown once). The
    commands that run on the datastore (`host`, `prune`, `gc`, ...) need none."""
    def go() -> None:
        ds = Datastore.open(data)
        _emit_token(as_json, None, Role.admin, *ds.reissue_token(None, Role.admin))
    _run(go)


def _emit_token(as_json: bool, host: str | None, role: Role, token: str, revoked: int) -> None:
    issued = TokenIssued(host=host, role=role, token=token, revoked=revoked)
    whose = f"of host {host}" if host else "of the server"
    _emit(as_json, issued.model_dump(mode="json"),
          f"new {role.value} token {whose}: {token}\n"
          f"{revoked} old {role.value} token(s) revoked")


@cli.group()
def point() -> None:
    """List, pin, unpin and delete a host's recovery points. POINT is 'latest', an ID or
    a unique prefix of one, or a time such as '2026-11-24 10:05' (the newest point at or
    before it)."""


def _points(ds: Datastore, host_name: str) -> list[PointInfo]:
    if not ds.catalog.host_exists(host_name):
        raise NotFoundError(f"no host {host_name!r}")
    return POINT_LIST.validate_json(ds.catalog.points_json(host_name, None, None, None))


@point.command("list")
@click.argument("host_name")
@data_option
@json_option
def point_list(host_name: str, data: Path, as_json: bool) -> None:
    """List HOST_NAME's points, oldest first: ID, time, size, verify status, pin."""
    def go() -> None:
        found = _points(Datastore.open(data), host_name)
        _emit(as_json, [p.model_dump(mode="json") for p in found],
              "\n".join(point_line(p) for p in found) or "no points")
    _run(go)


def _set_pin(host_name: str, choice: str, data: Path, as_json: bool, pinned: bool) -> None:
    ds = Datastore.open(data)
    chosen = select_point(_points(ds, host_name), choice, host_name)
    if not ds.catalog.set_pinned(host_name, chosen.point_id, pinned):
        raise NotFoundError(f"host {host_name!r} has no point {chosen.point_id} (pruned "
                            "meanwhile)")
    _emit(as_json, {"point_id": chosen.point_id, "pinned": pinned},
          f"point {chosen.point_id} of {host_name} {'pinned' if pinned else 'unpinned'}")


@point.command("pin")
@click.argument("host_name")
@click.argument("point_choice", metavar="POINT")
@data_option
@json_option
def point_pin(host_name: str, point_choice: str, data: Path, as_json: bool) -> None:
    """Keep POINT of HOST_NAME whatever the retention rules say."""
    _run(lambda: _set_pin(host_name, point_choice, data, as_json, True))


@point.command("unpin")
@click.argument("host_name")
@click.argument("point_choice", metavar="POINT")
@data_option
@json_option
def point_unpin(host_name: str, point_choice: str, data: Path, as_json: bool) -> None:
    """Hand POINT of HOST_NAME back to the retention rules."""
    _run(lambda: _set_pin(host_name, point_choice, data, as_json, False))


@point.command("delete")
@click.argument("host_name")
@click.argument("point_choice", metavar="POINT")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@data_option
@json_option
def point_delete(host_name: str, point_choice: str, yes: bool, data: Path,
                 as_json: bool) -> None:
    """Delete POINT of HOST_NAME, pinned or not; `gc` frees its space. Asks first unless
    --yes."""
    def go() -> None:
        ds = Datastore.open(data)
        chosen = select_point(_points(ds, host_name), point_choice, host_name)
        if not yes:
            pinned = ", pinned" if chosen.pinned else ""
            _confirm(f"delete point {chosen.point_id} of {host_name} "
                     f"({local_time(chosen.created)}{pinned})?")
        if not ds.catalog.delete_points(host_name, [chosen.point_id]):
            raise NotFoundError(f"host {host_name!r} has no point {chosen.point_id} "
                                "(deleted meanwhile)")
        _emit(as_json, {"deleted": chosen.point_id},
              f"point {chosen.point_id} of {host_name} deleted; `cdp-server gc` frees its space")
    _run(go)


@cli.group()
def retention() -> None:
    """Retention rules of a host (the server alone prunes)."""


@retention.command("set")
@click.argument("host_name")
@click.option("--keep-last", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--keep-minutely", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--keep-hourly", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--keep-daily", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--keep-weekly", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--keep-monthly", type=click.IntRange(min=0), default=0, show_default=True)
@data_option
@json_option
def retention_set(host_name: str, data: Path, as_json: bool, **keep: int) -> None:
    """Set HOST_NAME's rules. All zero keeps every point. Points count by the time the
    server committed them, not the time the agent says it made them. Days, weeks (from
    Monday), months, hours and minutes are cut in UTC, not local time, although `point
    list` shows local times."""
    def go() -> None:
        ds = Datastore.open(data)
        if not ds.catalog.host_exists(host_name):
            raise NotFoundError(f"no host {host_name!r}")
        try:
            rules = Retention(**keep)
        except ValueError as exc:
            raise UsageError(f"bad retention: {exc}") from None
        ds.catalog.set_retention(host_name, rules)
        _emit(as_json, rules.model_dump(), f"retention of {host_name}: {rules.model_dump()}")
    _run(go)


@cli.command()
@click.option("--host", "host_name", help="Only this host.")
@data_option
@json_option
def prune(host_name: str | None, data: Path, as_json: bool) -> None:
    """Remove points the retention rules do not keep (pinned points always stay)."""
    def go() -> None:
        ds = Datastore.open(data)
        if host_name is not None and not ds.catalog.host_exists(host_name):
            raise NotFoundError(f"no host {host_name!r}")
        report = jobs.prune(ds, host_name)
        _emit(as_json, report.model_dump(),
              f"kept {len(report.kept)} points, removed {len(report.removed)}")
    _run(go)


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="The server's configuration file: its `grace` and `data` apply unless "
              "given here.")
@click.option("--grace", type=_Seconds(),
              help="Spare objects uploaded or seen within this many seconds [default: "
              f"the configuration file's, else {cfgmod.DEFAULT_GRACE:.0f}].")
@click.option("--data", "data", type=click.Path(path_type=Path), envvar="CDP_SERVER_DATA",
              help="Datastore directory.")
@json_option
def gc(config_path: Path | None, grace: float | None, data: Path | None,
       as_json: bool) -> None:
    """Free objects no point references (mark and sweep). Exits 4 if it had to skip a
    host, naming the index page it could not read: nothing of that host is freed until
    the page is readable again or the points that use it are deleted."""
    def go() -> None:
        # The scheduled gc (cdp-server-maintenance.service) is the only gc that runs: it
        # reads the server's configuration file, so that a `grace` set there (longer
        # than 24 h for uploads that take longer) protects uploads in flight here too.
        conf, datastore = _configured(config_path, data, grace=grace)
        report = jobs.gc(Datastore.open(datastore), conf.grace)
        lines = [f"removed {report.removed_chunks} chunks and {report.removed_pages} pages, "
                 f"freed {report.freed_bytes} bytes; {report.kept_in_grace} kept in grace"]
        lines += [f"skipped host {s.host}: {s.reason}" for s in report.skipped_hosts]
        if report.skipped_hosts:
            lines.append("nothing of a skipped host is freed until its page is readable "
                         "again or the points that use it are deleted; `cdp-server verify` "
                         "names the damaged points")
        _emit(as_json, report.model_dump(), "\n".join(lines))
        if report.skipped_hosts:
            sys.exit(4)
    _run(go)


@cli.command()
@data_option
@json_option
def verify(data: Path, as_json: bool) -> None:
    """Re-read every referenced object and check its checksum (no key needed)."""
    def go() -> None:
        report = jobs.verify(Datastore.open(data))
        lines = [f"checked {report.checked_chunks} chunks and {report.checked_pages} pages",
                 f"damaged chunks: {len(report.damaged_chunks)}, missing chunks: "
                 f"{len(report.missing_chunks)}"]
        lines += [f"  point {r.point_id} volume {r.volume} bytes {r.offset}+{r.length}"
                  for r in report.ranges]
        lines += [f"  point {p}: its volumes or manifest changed in the catalog since its "
                  "commit" for p in sorted(set(report.damaged_points)
                                           - {r.point_id for r in report.ranges})]
        _emit(as_json, report.model_dump(), "\n".join(lines))
        if report.damaged_points:
            sys.exit(4)
    _run(go)


@cli.command()
@data_option
@json_option
def status(data: Path, as_json: bool) -> None:
    """Summary of the datastore: hosts, points, objects, bytes."""
    def go() -> None:
        doc = jobs.status(Datastore.open(data))
        _emit(as_json, doc, "\n".join(f"{k}: {v}" for k, v in doc.items()))
    _run(go)


def main() -> None:
    run_program(cli, "cdp-server")
