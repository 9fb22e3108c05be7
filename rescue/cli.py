"""`rescue`: the scripted command line of the restore engine (a thin client of
rescue.engine, like the TUI). Exit codes are those of cdpcore.errors."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar, get_args

import click

from cdpcore.cli import run_program
from cdpcore.client import CdpClient
from cdpcore.connection import check_connection
from cdpcore.errors import CdpError, UsageError
from cdpcore.points import local_time, point_line
from cdpcore.units import human

from .answers import Answers, load_answers, read_passphrase
from .auto import after_restore, decide, done_line, failed_line, fetch, given_options, shown
from .discover import discover_disks
from .engine import Engine, Event, EventSink, ExecuteOptions
from .mapping import parse_maps
from .plan import Plan, VerifyMode
from .repo import Repository
from .report import RestoreReport
from .resize import RESIZE_POLICIES
from .stream import MAX_WORKERS, StreamOptions
from .tui.cli import tui
from .tui.settings import boot_options_from, power

F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CdpError as exc:
            click.echo(f"rescue: error: {exc}", err=True)
            sys.exit(exc.exit_code)
    return wrapper  # type: ignore[return-value]


def _server_options(fn: F) -> F:
    for opt in reversed([
        click.option("--server", help="CDP server URL [env CDP_SERVER]"),
        click.option("--token", help="restore token of the host [env CDP_TOKEN]"),
        click.option("--host", "host_name", help="host whose points to restore [env CDP_HOST]"),
        click.option("--ca", help="CA certificate file of the server [env CDP_CA]"),
        click.option("--fingerprint", help="pin the server certificate's SHA-256 fingerprint "
                     "(self-signed servers) [env CDP_FINGERPRINT]"),
        click.option("--answers", "answers_file", help="answers file (JSON or YAML) for "
                     "unattended runs: the keys docs/RESCUE.md lists (server, token, host, "
                     "point, map, resize, verify, yes, ...)"),
    ]):
        fn = opt(fn)
    return fn


def _plan_options(fn: F) -> F:
    for opt in reversed([
        click.option("--point", help='"latest", a point ID (or unique prefix), or a time: '
                     'the newest point at or before "2026-11-24 10:05"'),
        click.option("--map", "maps", multiple=True, metavar="SRC=TARGET",
                     help="restore source disk SRC onto TARGET (a disk or image file)"),
        click.option("--resize", type=click.Choice(RESIZE_POLICIES),
                     help="partitions on a larger target: same (default), grow-last, "
                     "proportional (ESP, BIOS-boot, /boot, swap keep their size)"),
        click.option("--verify", "verify_mode", type=click.Choice(get_args(VerifyMode)),
                     help="trust per-block checks (default) or also read everything back"),
        click.option("--grow-fs/--no-grow-fs", default=None, help="grow ext2/3/4 and XFS "
                     "filesystems of partitions a resize enlarged (default: on)"),
        click.option("--reinstall-bootloader", is_flag=True, default=None,
                     help="after restoring, reinstall GRUB (BIOS or UEFI, as the protected "
                     "machine booted) from inside the restored system, with a new NVRAM "
                     "entry, config and initramfs: for new hardware"),
        click.option("--passphrase-file", help="file holding the key passphrase or a "
                     "recovery key [env CDP_PASSPHRASE_FILE; the passphrase itself: env "
                     "CDP_PASSPHRASE]"),
    ]):
        fn = opt(fn)
    return fn


def _client(a: Answers, server: str | None, token: str | None, ca: str | None,
            fingerprint: str | None) -> CdpClient:
    url, tok = a.get("server", server), a.get("token", token)
    if not url or not tok:
        raise UsageError("the server URL and a token are required: --server/--token, "
                         "CDP_SERVER/CDP_TOKEN, or the answers file")
    ca_path, pin = a.get("ca", ca), a.get("fingerprint", fingerprint)
    check_connection(url, ca_path, pin, schemes=("https", "http"))
    return CdpClient(url, tok, ca_path=ca_path, fingerprint=pin)


def _host(a: Answers, host: str | None) -> str:
    name = a.get("host", host)
    if not name:
        raise UsageError("name the host to restore: --host, CDP_HOST or the answers file")
    return str(name)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Restore a recovery point from a CDP server onto bare disks.

    Typical use: `rescue points ...` to choose, `rescue plan ... --map vda=/dev/sda` to
    review, then `rescue restore ... --yes` (or --dry-run to only print the plan)."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@_errors
def disks(as_json: bool) -> None:
    """List local disks, what is on them, and which are off limits."""
    found = discover_disks()
    if as_json:
        click.echo(json.dumps([d.to_json() for d in found], indent=2))
        return
    for d in found:
        ident = " ".join(f"{k}={v}" for k, v in (("model", d.model), ("serial", d.serial),
                                                 ("wwn", d.wwn), ("tran", d.transport)) if v)
        click.echo(f"{d.path:16} {human(d.size):>10}  {ident}")
        for line in d.contents:
            click.echo(f"{'':18}{line}")
        for why in d.busy:
            click.echo(f"{'':18}NOT A TARGET: {why}")


@cli.command()
@_server_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@_errors
def points(server: str | None, token: str | None, host_name: str | None, ca: str | None,
           fingerprint: str | None, answers_file: str | None, as_json: bool) -> None:
    """List the recovery points of a host, oldest first."""
    a = load_answers(answers_file)
    host = _host(a, host_name)
    found = sorted(_client(a, server, token, ca, fingerprint).points(host),
                   key=lambda p: p.created)
    if as_json:
        click.echo(json.dumps([p.model_dump(mode="json") for p in found], indent=2))
        return
    for p in found:
        click.echo(point_line(p))


def _engine(a: Answers, kw: dict[str, Any], prompt: bool, host: str | None = None) -> Engine:
    client = _client(a, kw["server"], kw["token"], kw["ca"], kw["fingerprint"])
    name = host or _host(a, kw["host_name"])
    return Engine(Repository.open(client, name, read_passphrase(a, kw["passphrase_file"],
                                                                prompt)))


def _engine_and_plan(a: Answers, kw: dict[str, Any], prompt: bool) -> tuple[Engine, Plan]:
    engine = _engine(a, kw, prompt)
    grow = a.get("grow_fs", kw["grow_fs"])
    plan = engine.plan(str(a.get("point", kw["point"]) or "latest"),
                       parse_maps(a.maps(kw["maps"])),
                       resize=a.get("resize", kw["resize"]) or "same",
                       verify=a.get("verify", kw["verify_mode"]) or "blocks",
                       grow_fs=True if grow is None else bool(grow),
                       reinstall_bootloader=bool(a.get("reinstall_bootloader",
                                                       kw["reinstall_bootloader"])))
    return engine, plan


def _saved_plan(a: Answers, kw: dict[str, Any], path: str, prompt: bool
                ) -> tuple[Engine, Plan]:
    """A plan saved by `rescue plan --save`: the options that shape a plan must not be
    given again (the file decides), and its host must be the one named, if any."""
    shaping = [f"--{k.replace('_', '-')}" for k in ("point", "resize", "verify_mode", "grow_fs",
                                                        "reinstall_bootloader")
               if kw[k] is not None] + (["--map"] if kw["maps"] else [])
    if shaping:
        raise UsageError(f"--plan {path} already decides {', '.join(shaping)}: drop them")
    in_answers = [k for k in ("point", "map", "resize", "verify", "grow_fs",
                              "reinstall_bootloader") if a.values.get(k) is not None]
    if in_answers:
        raise UsageError(f"--plan {path} already decides what the answers file's "
                         f"{', '.join(in_answers)} would: drop them from it, or do not use "
                         "--plan")
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read plan file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"plan file {path} is not JSON: {exc}") from None
    saved = Plan.from_json(doc)
    host = a.get("host", kw["host_name"])
    if host and host != saved.host:
        raise UsageError(f"plan file {path} restores host {saved.host!r}, not {host!r}")
    return _engine(a, kw, prompt, saved.host), saved


def print_plan(plan: Plan, err: bool = False) -> None:
    """On stdout, or with `err` on stderr (beside --json output)."""
    def echo(text: str) -> None:
        click.echo(text, err=err)

    echo(f"Restore host {plan.host}, point {plan.point_id} ({local_time(plan.created)})")
    for dp in plan.disks:
        echo(f"  source disk {dp.source} -> {dp.target.path} ({human(dp.target.size)}, "
             f"chosen by {dp.reason})")
    echo("Steps (destructive):")
    for i, action in enumerate(plan.actions, 1):
        echo(f"  {i:3}. {action.description}")
    for note in plan.notes:
        echo(f"  note: {note}")


@cli.command()
@_server_options
@_plan_options
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON")
@click.option("--save", type=click.Path(dir_okay=False), help="save the plan as JSON")
@_errors
def plan(as_json: bool, save: str | None, answers_file: str | None, **kw: Any) -> None:
    """Plan a restore and print every destructive step; writes nothing."""
    a = load_answers(answers_file)
    _, the_plan = _engine_and_plan(a, kw, prompt=sys.stdin.isatty())
    if save:
        try:
            Path(save).write_text(json.dumps(the_plan.to_json(), indent=2))
        except OSError as exc:
            raise UsageError(f"cannot write plan file {save}: {exc.strerror}") from None
    if as_json:
        click.echo(json.dumps(the_plan.to_json(), indent=2))
    else:
        print_plan(the_plan)


class _Progress:
    """One status line per action on stderr: bytes, rate and ETA."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.last = 0.0

    def __call__(self, ev: Event) -> None:
        if ev.kind == "start":
            self.began, self.last = time.monotonic(), 0.0
            click.echo(f"-> {ev.message}", err=True)
        elif ev.kind == "progress" and ev.total:
            now = time.monotonic()
            if now - self.last < 0.5 and ev.done < ev.total:
                return
            self.last = now
            rate = ev.done / max(now - self.began, 1e-6)
            eta = (ev.total - ev.done) / rate if rate else 0
            bar = "#" * int(30 * ev.done / ev.total)
            click.echo(f"\r   [{bar:30}] {human(ev.done)}/{human(ev.total)} "
                       f"{human(int(rate))}/s ETA {int(eta)}s   ", err=True,
                       nl=ev.done >= ev.total)
        elif ev.kind in ("failed", "note") or (ev.kind == "skip" and ev.action is None):
            click.echo(f"   {ev.kind}: {ev.message}", err=True)
        elif ev.kind == "skip":
            click.echo(f"   skip: {ev.message}", err=True)


@cli.command()
@_server_options
@_plan_options
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False),
              help="execute a plan saved by `rescue plan --save` (its targets are checked "
              "again: same size and identity, still not in use)")
@click.option("--dry-run", is_flag=True, help="print the plan and write nothing")
@click.option("--yes", is_flag=True, help="do not ask for confirmation (unattended)")
@click.option("--json", "as_json", is_flag=True, help="print the restore report as JSON")
@click.option("--state-dir", help="where the resume state and report go (default: next to "
              "the targets when all are image files, else /run/cdp-rescue)")
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS),
              help=f"worker processes that fetch, decrypt, verify and write (1 to "
              f"{MAX_WORKERS}; default: two per core, at most 16)")
@click.option("--checkpoint-mib", type=click.IntRange(1), default=64, show_default=True,
              help="sync the target and save the resume state every N MiB")
@_errors
def restore(plan_file: str | None, dry_run: bool, yes: bool, as_json: bool,
            state_dir: str | None, workers: int | None, checkpoint_mib: int,
            answers_file: str | None, **kw: Any) -> None:
    """Restore a point onto the mapped disks (rerun the same command to resume)."""
    report = run_restore(load_answers(answers_file), kw, interactive=sys.stdin.isatty(),
                         plan_file=plan_file, dry_run=dry_run, yes=yes, show_plan=not as_json,
                         state_dir=state_dir, workers=workers, checkpoint_mib=checkpoint_mib,
                         on_event=None if as_json else _Progress())
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    elif not dry_run:
        took = max(report.finished - report.started, 1e-6)
        click.echo(f"restored {human(report.bytes_restored)} in {took:.1f} s "
                   f"({human(int(report.bytes_restored / took))}/s)")


def run_restore(a: Answers, kw: dict[str, Any], *, interactive: bool,
                plan_file: str | None = None, dry_run: bool = False, yes: bool = False,
                show_plan: bool = True, state_dir: str | None = None,
                workers: int | None = None, checkpoint_mib: int = 64,
                on_event: EventSink | None = None) -> RestoreReport:
    """What `rescue restore` does, for it and `rescue auto`: plan (or load a saved plan),
    confirm (`interactive`: ask on the terminal; else --yes or the answers' "yes" is
    needed), execute. `kw` holds the server and plan options as given on a command line."""
    engine, the_plan = (_saved_plan(a, kw, plan_file, interactive) if plan_file
                        else _engine_and_plan(a, kw, interactive))
    if show_plan:
        print_plan(the_plan)
    if not dry_run and not (yes or a.get("yes")):
        if not interactive:
            raise UsageError("refusing to write without confirmation: add --yes (or "
                             '"yes": true in the answers file), or use --dry-run')
        if not show_plan:  # --json: what is confirmed is shown, on stderr
            print_plan(the_plan, err=True)
        targets = ", ".join(d.target.path for d in the_plan.disks)
        # On stderr, like the passphrase's: stdout may be the --json report.
        try:
            answer = click.prompt(f"Everything on {targets} will be destroyed. Type YES to "
                                  "go on", err=True)
        except click.Abort:  # Ctrl-C or the end of the input: click's bare "Aborted!"
            click.echo(err=True)
            answer = ""
        if answer != "YES":
            raise UsageError("not confirmed: nothing was written")
    opts = ExecuteOptions(dry_run=dry_run, state_dir=a.get("state_dir", state_dir),
                          stream=StreamOptions(checkpoint_bytes=checkpoint_mib << 20))
    if a.get("workers", workers):
        opts.stream.workers = int(a.get("workers", workers))
    return engine.execute(the_plan, opts, on_event)


@cli.command()
@_server_options
@_plan_options
@_errors
def verify(answers_file: str | None, **kw: Any) -> None:
    """Read restored targets back and check every block against the point."""
    a = load_answers(answers_file)
    kw["verify_mode"] = "read-back"
    engine, the_plan = _engine_and_plan(a, kw, prompt=sys.stdin.isatty())
    the_plan.actions = [act for act in the_plan.actions if act.type == "verify"]
    engine.execute(the_plan, ExecuteOptions(state_dir=a.get("state_dir")), _Progress())
    click.echo(f"verified {len(the_plan.actions)} volumes: every block matches point "
               f"{the_plan.point_id}")


@cli.command()
@click.option("--cmdline", default="/proc/cmdline", show_default=True,
              help="kernel command line to read the boot options from")
def auto(cmdline: str) -> None:
    """Unattended restore as the boot options say (cdp.auto=1 cdp.answers=URL|path): run by
    the rescue init. Prints a CDP-RESTORE-DONE line, then does the answers file's "after"
    (shell, reboot, poweroff). Without cdp.auto=1 it does nothing."""
    try:
        # In the try: a malformed /etc/cdp/defaults.json, read here, was a traceback and
        # no CDP-RESTORE-DONE line for the init and the tests that wait for it.
        boot = boot_options_from(cmdline)
        run = decide(boot)
        if run is None:
            click.echo("rescue auto: no cdp.auto=1 on the kernel command line: nothing to do")
            return
        click.echo(f"rescue auto: unattended restore, answers from {shown(run.answers)}",
                   err=True)
        a = load_answers(fetch(run, boot.ca))
        after = after_restore(a)
        report = run_restore(a, given_options(boot), interactive=False, on_event=_Progress())
    except Exception as exc:
        click.echo(failed_line(exc))
        sys.exit(exc.exit_code if isinstance(exc, CdpError) else 1)
    if report.saved_to:
        # The report is in RAM (/run) unless "state_dir" says otherwise: a reboot or
        # power-off loses it, so say where it is before the result line.
        click.echo(f"rescue auto: restore report in {report.saved_to}"
                   + (" (RAM: lost at reboot or power-off)"
                      if report.saved_to.startswith("/run/") else ""), err=True)
    click.echo(done_line(report))
    if after != "shell":
        try:
            power(after)
        except CdpError as exc:
            # After the "ok" line: a failed reboot/poweroff was an uncaught traceback.
            click.echo(f"rescue auto: error: the restore succeeded, but {after} failed: "
                       f"{exc}", err=True)
            sys.exit(exc.exit_code)


cli.add_command(tui)


def main() -> None:
    run_program(cli, "rescue")
