"""Image files: a reflink copy gives a true point-in-time view at no cost where the
filesystem shares extents (XFS, btrfs); elsewhere the file is read as it is.

A copy is named `.cdpsnap-<owner tag>-<file>-<pid>` beside its file, with the agent's LVM
owner tag (lvm.owner_tag), so that the cleanup of a killed run's leftovers removes only
that agent's copies: another agent may be reading its own copy of another image in the
same directory. A name that would pass the 255-byte limit of a file name keeps the start
of the file's name and a hash of all of it instead."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from cdpcore import runcmd
from cdpcore.signals import stop_signals_deferred

from .lvm import TAG_PREFIX

log = logging.getLogger("cdp.agent.snapshot")
PREFIX = ".cdpsnap-"
#: The owner tag in a copy's name; an agent from before the tags named its copies
#: `.cdpsnap-<file>-<pid>`.
_OWNER = re.compile(re.escape(PREFIX) + f"({TAG_PREFIX}[0-9a-f]+)-")
#: Longest file name in bytes (NAME_MAX of ext4, XFS, btrfs).
NAME_MAX = 255


def copy_name(name: str, tag: str, pid: int) -> str:
    """The copy's file name: `.cdpsnap-<tag>-<name>-<pid>`, or, when that is too long for a
    file name, `.cdpsnap-<tag>-<start of name>~<hash of name>-<pid>`."""
    full = f"{PREFIX}{tag}-{name}-{pid}"
    if len(os.fsencode(full)) <= NAME_MAX:
        return full
    raw = os.fsencode(name)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    room = NAME_MAX - len(os.fsencode(f"{PREFIX}{tag}-~{digest}-{pid}"))
    # fsdecode of a cut multi-byte character gives surrogate escapes of the same bytes
    return f"{PREFIX}{tag}-{os.fsdecode(raw[:room])}~{digest}-{pid}"


def leftovers(directory: Path, tag: str) -> list[Path]:
    """The copies in `directory` to remove: those of owner tag `tag`, and untagged ones.
    Another agent's copies are left alone."""
    out = []
    for copy in sorted(directory.glob(PREFIX + "*")):
        owner = _OWNER.match(copy.name)
        if owner is None or owner[1] == tag:
            out.append(copy)
    return out


def remove_leftovers(directory: Path, tag: str) -> None:
    for leftover in leftovers(directory, tag):
        log.warning("removing leftover snapshot %s of an interrupted run", leftover)
        leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def snapshot(path: str, tag: str) -> Iterator[str]:
    """A reflink copy of `path` for the agent of owner tag `tag`, or `path` itself."""
    src = Path(path)
    copy = src.parent / copy_name(src.name, tag, os.getpid())
    try:
        # cp runs to its end, Ctrl-C and SIGTERM held back meanwhile: cut short, it was
        # killed but not waited for, and could create the copy after it was removed here;
        # and it leaves an empty copy when the filesystem has no reflinks.
        with stop_signals_deferred():
            reflinked = runcmd.run(["cp", "--reflink=always", str(src), str(copy)],
                                   check=False).returncode == 0
        if not reflinked:
            copy.unlink(missing_ok=True)
            log.debug("no reflink on %s: reading the file as it is", src.parent)
        yield str(copy) if reflinked else path
    finally:
        copy.unlink(missing_ok=True)
