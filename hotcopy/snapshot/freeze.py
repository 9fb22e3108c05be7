"""fsfreeze: the last resort for a block device with no snapshot mechanism (a whole disk, a
partition). Every filesystem mounted on the device or on anything it holds (its partitions,
a dm-crypt or md device on them) is frozen while the device is read; LVM logical volumes
are left alone: they are volumes of their own, read from LVM snapshots.

A frozen filesystem blocks its writers until it is thawed, so no freeze may outlive the
agent:

- normal end and errors: the context manager thaws, in reverse order;
- the agent killed (SIGKILL, the OOM killer, SIGTERM of `cdp-agent backup`): a guard
  process (hotcopy.thawguard), started before the first freeze in a session of its own
  and deaf to SIGHUP/SIGINT/SIGTERM, waits on the agent's pidfd and thaws as soon as the
  agent is gone without having said `thawed` on the guard's stdin;
- a freeze that lasts too long (`max_freeze`, the point stuck behind a server that does
  not answer, a slow full read): the guard thaws at the deadline and says so, and the
  point fails instead of being committed from a read that was not point-in-time;
- agent and guard killed together (systemd's final SIGKILL of the unit's cgroup): the
  marker file in the state directory lists the frozen mountpoints, written before the first
  freeze; the unit's `ExecStopPost=cdp-agent thaw` and the next run thaw them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cdpcore import runcmd
from cdpcore.errors import CommandFailed

from .. import thawguard
from ..capture import drop_cache
from ..errors import SnapshotError

log = logging.getLogger("cdp.agent.snapshot")
MARKER = "frozen"
#: What fsfreeze says (untranslated) of a filesystem that is not frozen (EINVAL).
NOT_FROZEN = "unfreeze failed: Invalid argument"


def mounted_filesystems(doc: dict[str, Any], holders_only: bool = False) -> list[str]:
    """The mountpoints to freeze for reading a device, from `lsblk --json -o
    NAME,PATH,TYPE,MOUNTPOINTS DEVICE`: one per mounted block device in its tree (a
    filesystem is frozen once, whatever its bind mounts), LVM volumes and what they hold
    excluded. Raises SnapshotError for the root filesystem, which cannot be frozen under
    a running system.

    `holders_only` (an LV about to be snapshotted): only what is mounted on devices stacked
    over it (a dm-era or dm-crypt device); lvcreate freezes a filesystem mounted on the LV
    itself. The root filesystem is left out there, not refused: its snapshot is
    crash-consistent, as any LVM snapshot of a filesystem that cannot be frozen."""
    targets: list[str] = []

    def walk(dev: dict[str, Any], top: bool) -> None:
        if dev.get("type") == "lvm" and not top:
            return
        mounts = [m for m in dev.get("mountpoints") or [] if m and m.startswith("/")]
        if holders_only and (top or "/" in mounts):
            mounts = []
        if "/" in mounts:
            raise SnapshotError(
                f"{dev.get('path') or dev.get('name')} holds the root filesystem, which "
                "cannot be frozen: put it on LVM, or protect it from the rescue system")
        if mounts and mounts[0] not in targets:
            targets.append(mounts[0])
        for child in dev.get("children") or []:
            walk(child, False)

    for dev in doc.get("blockdevices") or []:
        walk(dev, True)
    return targets


def thaw(target: str) -> None:
    """Thaw the filesystem mounted on `target`. A failure is logged, not raised: the
    other filesystems must be thawed still, and the error being handled is the one to
    report. One the guard has thawed already (at max_freeze, or when the agent died) is
    no failure."""
    try:
        runcmd.run(["fsfreeze", "--unfreeze", target], env=runcmd.untranslated())
    except CommandFailed as exc:
        if NOT_FROZEN in exc.stderr:
            log.debug("%s was thawed already", target)
        else:
            log.warning("could not thaw %s: its writers wait until it is thawed (%s)",
                        target, exc)


def thaw_leftover(state_dir: Path) -> None:
    marker = state_dir / MARKER
    if marker.exists():
        for target in marker.read_text().split("\n"):
            if target:
                log.warning("thawing %s, left frozen by an interrupted run", target)
                thaw(target)
        marker.unlink()


def _check_state_dir(device: str, targets: list[str], state_dir: Path) -> None:
    # The agent writes its state during the read: on a frozen filesystem it would hang.
    st_dev = os.stat(state_dir).st_dev
    for target in targets:
        if os.stat(target).st_dev == st_dev:
            raise SnapshotError(f"the state directory {state_dir} is on {target}, which must "
                                f"be frozen to read {device}: move the state directory")


@contextlib.contextmanager
def frozen(device: str, state_dir: Path, max_seconds: float = 0,
           holders_only: bool = False) -> Iterator[None]:
    """Freeze what is mounted on `device` for the body. `max_seconds` (0: no limit): the
    guard thaws the filesystems once they have been frozen that long, whatever the agent
    is doing, and the freeze then ends with a SnapshotError: the read was not
    point-in-time, and the point must not be committed. `holders_only`: see
    mounted_filesystems; the body then only makes a snapshot of `device`."""
    doc = runcmd.run_json(["lsblk", "--json", "-o", "NAME,PATH,TYPE,MOUNTPOINTS", device])
    targets = mounted_filesystems(doc, holders_only)
    if not targets:
        if not holders_only:
            drop_cache(device)
        yield  # nothing mounted: nothing writes to it
        return
    if not holders_only:  # the agent writes no state while a snapshot is made
        _check_state_dir(device, targets, state_dir)
    marker = state_dir / MARKER
    marker.write_text("".join(t + "\n" for t in targets))
    guard = runcmd.start([sys.executable, "-m", "hotcopy.thawguard", str(os.getpid()),
                          str(max_seconds), *targets])
    assert guard.stdin is not None and guard.stdout is not None
    froze = time.monotonic()
    failing = False
    try:
        with contextlib.ExitStack() as stack:
            for target in targets:
                runcmd.run(["fsfreeze", "--freeze", target])
                stack.callback(thaw, target)
            log.info("froze %s to %s %s", ", ".join(targets),
                     "snapshot" if holders_only else "read", device)
            if not holders_only:
                drop_cache(device)
            yield
        # How long the applications' writes were held: what a sysadmin weighs against
        # putting the filesystem on LVM.
        log.info("thawed %s after %.2f s", ", ".join(targets), time.monotonic() - froze)
    except BaseException:
        failing = True
        raise
    finally:
        # Told, the guard exits without thawing: a later freeze is not its business.
        with contextlib.suppress(OSError):
            guard.stdin.write(b"thawed\n")
            guard.stdin.close()
        guard.wait()
        expired = thawguard.EXPIRED in guard.stdout.read()
        guard.stdout.close()
        marker.unlink(missing_ok=True)
        if expired and not failing:
            raise SnapshotError(
                f"{', '.join(targets)} stayed frozen longer than max_freeze ({max_seconds:g} s) "
                f"while {device} was read: the guard thawed them and the point is not "
                "committed; put the filesystem on LVM, or raise max_freeze")
