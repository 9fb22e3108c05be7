"""fsfreeze: the last resort for a mounted block device with no snapshot mechanism. The
filesystem is frozen only while the device is read; a marker file in the state directory
names it, so a killed run's freeze is undone by the next run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from cdpcore import runcmd

from ..errors import SnapshotError

log = logging.getLogger("cdp.agent.snapshot")
MARKER = "frozen"


def mountpoint(device: str) -> str | None:
    proc = runcmd.run(["findmnt", "-n", "-o", "TARGET", "--source", device], check=False)
    lines = proc.stdout.decode().split()
    return lines[0] if proc.returncode == 0 and lines else None


def thaw_leftover(state_dir: Path) -> None:
    marker = state_dir / MARKER
    if marker.exists():
        target = marker.read_text().strip()
        log.warning("thawing %s, left frozen by an interrupted run", target)
        runcmd.run(["fsfreeze", "--unfreeze", target], check=False)
        marker.unlink()


@contextlib.contextmanager
def frozen(device: str, state_dir: Path) -> Iterator[None]:
    target = mountpoint(device)
    if target is None:
        yield  # not mounted: nothing writes to it
        return
    if target == "/":
        raise SnapshotError(f"{device} is the root filesystem and has no snapshot "
                            "mechanism: put it on LVM, or protect it from the rescue system")
    marker = state_dir / MARKER
    marker.write_text(target)
    runcmd.run(["fsfreeze", "--freeze", target])
    try:
        yield
    finally:
        runcmd.run(["fsfreeze", "--unfreeze", target], check=False)
        marker.unlink(missing_ok=True)
