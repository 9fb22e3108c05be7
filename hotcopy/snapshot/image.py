"""Image files: a reflink copy gives a true point-in-time view at no cost where the
filesystem shares extents (XFS, btrfs); elsewhere the file is read as it is."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from cdpcore import runcmd
from cdpcore.errors import CommandFailed

log = logging.getLogger("cdp.agent.snapshot")
PREFIX = ".cdpsnap-"


def remove_leftovers(directory: Path) -> None:
    for leftover in directory.glob(PREFIX + "*"):
        log.warning("removing leftover snapshot %s of an interrupted run", leftover)
        leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def snapshot(path: str) -> Iterator[str]:
    src = Path(path)
    copy = src.parent / f"{PREFIX}{src.name}-{os.getpid()}"
    try:
        runcmd.run(["cp", "--reflink=always", str(src), str(copy)])
    except CommandFailed:
        copy.unlink(missing_ok=True)
        log.debug("no reflink on %s: reading the file as it is", src.parent)
        yield path
        return
    try:
        yield str(copy)
    finally:
        copy.unlink(missing_ok=True)
