"""`cdp-agent`: init, backup, run, points, verify, status, thaw and the `era` group.
Every command exits with the stable code of its error class (cdpcore.errors,
hotcopy.errors) and prints one line saying what went wrong and what to do."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any

import click

from cdpcore import format as fmt
from cdpcore import keys
from cdpcore.cli import run_program
from cdpcore.errors import CdpError, StopRequested, UsageError
from cdpcore.points import point_line, select_point

from . import config as cfgmod
from . import era as eramod
from . import logs, priority, transfer
from .backup import BackupOptions, backup
from .capture import local_disks
from .errors import StateBusy
from .keysetup import codec_for_host, establish_key
from .remote import Remote
from .snapshot import freeze
from .state import StateDir
from .verify import verify_point

log = logging.getLogger("cdp.agent")
config_option = click.option("--config", "config_path", default=cfgmod.DEFAULT_CONFIG,
                             show_default=True, envvar="CDP_AGENT_CONFIG",
                             help="Configuration file.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def make_client(server: str, token: str, ca: str = "", fingerprint: str = "") -> Remote:
    from cdpcore.client import CdpClient

    # A stop (SIGTERM in `run` and `backup`, Ctrl-C during a point) also ends a request the server
    # does not answer, here and in the forked sealing workers (the flag is shared).
    client: Remote = CdpClient(server, token, ca_path=ca or None,
                               fingerprint=fingerprint or None,
                               stop_grace=transfer.stop_grace)
    return client


@contextmanager
def _ctrl_c_stops() -> Iterator[None]:
    """A Ctrl-C abandons the point at once (KeyboardInterrupt) and requests the stop too,
    with no grace: a sealing worker waiting for a server that does not answer then gives up
    at once instead of holding the pool's closing, and the point's snapshots, for the
    client's tries (up to 10 minutes). Only where SIGINT has Python's own handler (not
    ignored, as under `nohup ... &`)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def interrupted(signum: int, frame: Any) -> None:
        transfer.request_stop(grace=0)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def _sigterm_stops(grace: float) -> Iterator[None]:
    """SIGTERM (systemd's stop, `timeout`, `kill PID`) requests the stop with `grace`
    seconds (`stop_grace`): the point under way finishes if the server answers each request
    within them, else it is abandoned (StopRequested), committing nothing and releasing its
    snapshots. Python's default ended the agent outright, snapshots held. The previous
    handler is back afterwards."""
    previous = signal.signal(signal.SIGTERM, lambda *_: transfer.request_stop(grace))
    try:
        yield
    finally:
        if previous is not None:  # None: not set from Python, nothing to put back
            signal.signal(signal.SIGTERM, previous)


def _emit(as_json: bool, doc: Any, text: str, *, one_line: bool = False) -> None:
    """`one_line`: the JSON on one line (`run`, whose stdout the journal takes line by line)."""
    click.echo(json.dumps(doc, indent=None if one_line else 2, default=str) if as_json
               else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Hot-copy agent: consistent point-in-time copies of this machine's disks, sent as
    changed blocks to a CDP server. Start with `cdp-agent init`."""
    logs.setup(verbose)


@cli.command()
@click.option("--server", required=True, help="CDP server URL (https://host:port).")
@click.option("--token", required=True, envvar="CDP_AGENT_TOKEN", help="Agent token of this host.")
@click.option("--host", required=True, help="Host name on the server.")
@click.option("--passphrase", envvar="CDP_PASSPHRASE",
              help="Key passphrase (prompted when not given, twice for a new key).")
@click.option("--ca", default="", help="CA certificate (PEM) that signed the server's certificate.")
@click.option("--fingerprint", default="",
              help="SHA-256 fingerprint of the server certificate, to pin a self-signed one.")
@click.option("--source", "sources", multiple=True, help="Device or image to protect (repeatable).")
@click.option("--state-dir", default=cfgmod.DEFAULT_STATE_DIR, show_default=True)
@click.option("--interval", default=300, show_default=True,
              help="Seconds between points in `run` (>= 60).")
@click.option("--print-recovery-key", is_flag=True,
              help="Print the printable recovery key (store it offline).")
@click.option("--force", is_flag=True,
              help="Replace an existing configuration file (its other settings are lost).")
@config_option
def init(server: str, token: str, host: str, passphrase: str | None, ca: str, fingerprint: str,
         sources: tuple[str, ...], state_dir: str, interval: int, print_recovery_key: bool,
         force: bool, config_path: str) -> None:
    """Connect this machine to a server: create the repository key (or fetch and unwrap the
    existing one) and write the configuration file (mode 0600)."""
    # Paths as the service will see them: it does not run in this directory.
    conf = cfgmod.AgentConfig(server=server, token=token, host=host, recovery_key="", ca=ca,
                              fingerprint=fingerprint, state_dir=os.path.abspath(state_dir),
                              sources=[os.path.abspath(s) for s in sources], interval=interval)
    conf.check()
    if not force and os.path.lexists(config_path):
        raise UsageError(f"{config_path} exists: edit it, or pass --force to replace it (its "
                         "other settings are then lost)")

    def ask(new: bool) -> str:
        """The passphrase; typed twice when it is to wrap a new key (a typo would lock
        every point away behind a passphrase nobody knows)."""
        if passphrase is not None:
            return passphrase
        try:
            answer: str = click.prompt("Passphrase for the new key" if new else "Passphrase",
                                       hide_input=True, confirmation_prompt=new)
        except click.Abort as exc:
            # click makes Ctrl-C and the end of the input alike an Abort (exit 130,
            # "interrupted"); `init ... < /dev/null` in a script is neither.
            if isinstance(exc.__context__, EOFError):
                raise UsageError("no passphrase: the input ended before one was typed; "
                                 "give --passphrase or CDP_PASSPHRASE") from None
            raise
        return answer

    master, created = establish_key(make_client(server, token, ca, fingerprint), host, ask)
    conf.recovery_key = keys.recovery_key(master)
    StateDir(conf.state_dir, host)
    cfgmod.save(conf, config_path)
    click.echo(f"{'created a new' if created else 'unwrapped the existing'} key for host "
               f"{host}; configuration written to {config_path}")
    if print_recovery_key:
        click.echo(f"recovery key: {conf.recovery_key}")


def _load(config_path: str) -> cfgmod.AgentConfig:
    return cfgmod.load(config_path)


@contextmanager
def _progress(enabled: bool) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(on_total, progress) callbacks drawing a bar with rate and ETA on a terminal."""
    if not enabled:
        yield (lambda _: None), (lambda _: None)
        return
    bar: Any = None
    start = time.monotonic()
    done = 0

    def rate(_: Any) -> str:
        elapsed = max(time.monotonic() - start, 1e-3)
        return f"{done / elapsed / 2**20:.0f} MiB/s"

    def on_total(total: int) -> None:
        nonlocal bar
        bar = click.progressbar(length=total, label="reading", show_eta=True,
                                item_show_func=rate, file=sys.stderr)
        bar.__enter__()

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if bar is not None:
            bar.update(n, done)

    try:
        yield on_total, progress
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def _one_point(conf: cfgmod.AgentConfig, as_json: bool, interactive: bool,
               one_line: bool = False) -> None:
    remote = make_client(conf.server, conf.token, conf.ca, conf.fingerprint)
    codec = codec_for_host(remote, conf.host, conf.recovery_key, conf.compression_level)
    if not conf.sources:
        # whole disks by default, found afresh for every point (a disk added is protected)
        conf = replace(conf, sources=local_disks())
        if not conf.sources:
            raise UsageError("no sources configured and no local disk found: pass --source "
                             "or set `sources` in the config")
    opts = BackupOptions(full_scan_every=conf.full_scan_every, bandwidth=conf.bandwidth,
                         skip_free=conf.skip_free, max_freeze=conf.max_freeze)
    priority.lower(conf.nice, conf.io_class)
    with _ctrl_c_stops(), _progress(interactive and not as_json) as (on_total, progress):
        info = backup(remote, conf.host, codec, conf.sources, conf.state_dir,
                      tracking=conf.tracking, block_size=conf.block_size,  # type: ignore[arg-type]
                      workers=conf.workers, progress=progress, on_total=on_total, options=opts)
    s = info.stats
    _emit(as_json, info.model_dump(mode="json"),
          f"point {info.point_id}: {s.changed_bytes} bytes changed, {s.new_chunks} new chunks "
          f"({s.new_bytes} bytes sent), {s.scanned_bytes} bytes read in {s.duration:.1f} s",
          one_line=one_line)


def _overrides(conf: cfgmod.AgentConfig, sources: tuple[str, ...], tracking: str | None,
               bandwidth: int | None, compression_level: int | None) -> cfgmod.AgentConfig:
    if sources:  # relative to where the command runs (the config file's must be absolute)
        conf = replace(conf, sources=[os.path.abspath(s) for s in sources])
    if tracking:
        conf = replace(conf, tracking=tracking)
    if bandwidth is not None:
        conf = replace(conf, bandwidth=bandwidth)
    if compression_level is not None:
        conf = replace(conf, compression_level=compression_level)
    return conf.check()


source_option = click.option("--source", "sources", multiple=True,
                             help="Device or image to protect (overrides the config).")
tracking_option = click.option("--tracking", type=click.Choice(["scan", "era"]), default=None,
                               help="Change tracking (default from the config: scan).")
bandwidth_option = click.option("--bandwidth", type=int, default=None,
                                help="Upload cap in bytes per second (0: none; else at "
                                     f"least {cfgmod.MIN_BANDWIDTH}).")
compression_option = click.option(
    "--compression-level", type=int, default=None,
    help=f"zstd level of the blocks sent: {fmt.MIN_ZSTD_LEVEL} (fastest) to "
         f"{fmt.MAX_ZSTD_LEVEL} (smallest), 0 for none (default from the config: "
         f"{fmt.ZSTD_LEVEL}). Points of any level restore alike.")


@cli.command("backup")
@config_option
@source_option
@tracking_option
@bandwidth_option
@compression_option
@json_option
def backup_cmd(config_path: str, sources: tuple[str, ...], tracking: str | None,
               bandwidth: int | None, compression_level: int | None, as_json: bool) -> None:
    """Take one recovery point now. SIGTERM lets it finish if the server answers within
    `stop_grace`, else abandons it (exit 14); SIGINT (Ctrl-C) abandons it at once (exit
    130). An abandoned point is never half-committed."""
    conf = _overrides(_load(config_path), sources, tracking, bandwidth, compression_level)
    with _sigterm_stops(conf.stop_grace):
        try:
            _one_point(conf, as_json, sys.stderr.isatty())
        except StopRequested as exc:  # the stop gave up on a server that did not answer
            raise StopRequested(f"point abandoned: {exc}") from None


@cli.command()
@config_option
@source_option
@tracking_option
@bandwidth_option
@compression_option
@click.option("--interval", type=int, default=None, help="Seconds between points (>= 60).")
def run(config_path: str, sources: tuple[str, ...], tracking: str | None,
        bandwidth: int | None, compression_level: int | None, interval: int | None) -> None:
    """Take a recovery point every INTERVAL seconds until stopped: SIGTERM lets the point
    in progress finish, SIGINT (Ctrl-C) abandons it (exit 130). A failed or abandoned
    point is never half-committed; a failed one is logged and retried at the next tick."""
    conf = _overrides(_load(config_path), sources, tracking, bandwidth, compression_level)
    if interval is not None:
        conf = replace(conf, interval=interval).check()
    # The point under way finishes if the server answers each request within the grace;
    # one waiting to retry a silent server gives up.
    with _sigterm_stops(conf.stop_grace):
        while not transfer.stopping():
            tick = time.monotonic()
            try:
                # One JSON line per point: under systemd each line of stdout is a journal
                # entry, and an indented document was some 17 of them every interval.
                _one_point(conf, True, False, one_line=True)
            except StopRequested as exc:  # the stop gave up on a server that did not answer
                log.warning("point abandoned: %s", exc)
            except CdpError as exc:
                log.error("point failed: %s", exc)
            except Exception:  # a bug, or a worker killed: the next tick still comes
                log.exception("point failed with an unexpected error (please report it)")
            # Sleep to the tick itself (a wait that a SIGTERM ends within a second): whole
            # seconds from wherever the point ended overshot it, and every point started up
            # to a second later than the one before (a point taking longer starts the next
            # at once).
            transfer.wait(tick + conf.interval - time.monotonic())


@cli.command()
@config_option
@json_option
def points(config_path: str, as_json: bool) -> None:
    """List this host's recovery points, oldest first."""
    conf = _load(config_path)
    pts = sorted(make_client(conf.server, conf.token, conf.ca, conf.fingerprint).points(conf.host),
                 key=lambda p: p.created)
    _emit(as_json, [p.model_dump(mode="json") for p in pts],
          "\n".join(point_line(p) for p in pts) or "no points")


@cli.command()
@config_option
@json_option
@click.argument("point")
def verify(config_path: str, as_json: bool, point: str) -> None:
    """Fetch, decrypt and check every chunk of POINT ('latest', an ID or a unique prefix,
    or a time such as '2026-11-24 10:05'). Exit code 4 if any chunk is missing or damaged,
    or an index page (then the blocks under it are named, unchecked)."""
    conf = _load(config_path)
    remote = make_client(conf.server, conf.token, conf.ca, conf.fingerprint)
    point = select_point(remote.points(conf.host), point, conf.host).point_id
    result = verify_point(remote, conf.host,
                          codec_for_host(remote, conf.host, conf.recovery_key), point)
    _emit(as_json, {**asdict(result), "ok": result.ok},
          f"point {point}: {result.chunks_checked} chunks ({result.bytes_checked} bytes) "
          f"checked, {len(result.missing)} missing, {len(result.damaged)} damaged"
          + "".join(f"\n  {line}" for line in result.unreadable))
    if not result.ok:
        sys.exit(4)


@cli.command()
@config_option
@json_option
def status(config_path: str, as_json: bool) -> None:
    """Local state and the server's view of this host."""
    conf = _load(config_path)
    state = StateDir(conf.state_dir, conf.host).load()
    pts = make_client(conf.server, conf.token, conf.ca, conf.fingerprint).points(conf.host)
    latest = max(pts, key=lambda p: p.created, default=None)
    doc = {"host": conf.host, "server": conf.server, "sources": conf.sources,
           "tracking": conf.tracking, "generation": state.generation,
           "local_point": state.point_id, "server_points": len(pts),
           "server_latest": latest.point_id if latest else None,
           "in_sync": latest is not None and latest.point_id == state.point_id}
    _emit(as_json, doc, "\n".join(f"{k}: {v}" for k, v in doc.items()))


@cli.command()
@config_option
def thaw(config_path: str) -> None:
    """Thaw the filesystems a killed agent left frozen (the systemd unit's ExecStopPost;
    every run does it too)."""
    conf = _load(config_path)
    store = StateDir(conf.state_dir, conf.host)
    try:
        with store.lock():
            freeze.thaw_leftover(store.dir)
    except StateBusy:
        # A run is taking a point (a manual backup beside the stopped service): its
        # freeze is its own, and its guard thaws if it dies.
        log.info("a point is being taken: its frozen filesystems are left to it")


@cli.group()
def era() -> None:
    """dm-era change tracking: an era device over a volume records which blocks are
    written, so that `--tracking era` reads only those. Attach it at boot, before the
    filesystem is mounted, and mount the filesystem from /dev/mapper/cdpera-NAME."""


class _FiniteSeconds(click.FloatRange):
    """Seconds, 0 or more and finite: `--wait nan` (which FloatRange passes, comparing
    false with any bound) or `inf` waited for the devices forever."""

    def __init__(self) -> None:
        super().__init__(min=0)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return seconds


@era.command("attach")
@click.argument("volume")
@click.option("--metadata", required=True,
              help="Device for dm-era's metadata (a small LV of its own).")
@click.option("--name", default="",
              help="Era device name: /dev/mapper/cdpera-NAME (default: the volume's name).")
@click.option("--block-sectors", type=click.IntRange(min=1), default=128, show_default=True,
              help="Tracking granularity in 512-byte sectors.")
@click.option("--reset-unreadable", is_flag=True,
              help="Wipe metadata that dm-era refuses and start tracking afresh (the next "
                   "point is then a full scan).")
@click.option("--wait", type=_FiniteSeconds(), default=0, show_default=True,
              help="Seconds to wait for the devices to appear (at boot).")
def era_attach(volume: str, metadata: str, name: str, block_sectors: int,
               reset_unreadable: bool, wait: float) -> None:
    """Put a dm-era device over VOLUME (unused: not yet mounted) and print its path; an
    era device already over VOLUME is kept."""
    click.echo(eramod.attach(volume, metadata, name, block_sectors, reset_unreadable, wait))


@era.command("status")
@json_option
def era_status(as_json: bool) -> None:
    """The era devices of this machine: origin, metadata, current era."""
    docs = [eramod.status(dev) for dev in eramod.list_eras()]
    _emit(as_json, docs, "\n".join(
        f"{d['device']}: origin {d['origin']}, metadata {d['metadata']} "
        f"({d['metadata_blocks_used']}/{d['metadata_blocks_total']} blocks), "
        f"era {d['current_era']}, {d['block_bytes']} B blocks" for d in docs)
        or "no dm-era devices")


@era.command("detach")
@click.argument("name_or_volume")
def era_detach(name_or_volume: str) -> None:
    """Remove an era device (by name, or by the volume it tracks); unmount its filesystem
    first. The volume itself is untouched; points fall back to scanning."""
    dev = eramod.detach(name_or_volume)
    click.echo(f"removed /dev/mapper/{dev.name}")


def main() -> None:
    run_program(cli, "cdp-agent")

