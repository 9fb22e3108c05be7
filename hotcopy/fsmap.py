"""Blocks a volume's filesystem marks free, so a scan need not read or send them (as
partclone does): they become all-zero blocks of the point, and a half-empty disk costs
half.

Only ext2/3/4 for now, read with `dumpe2fs` from the very view being backed up (the
snapshot), so the map and the data are of the same instant. The map is trusted only when
it cannot be stale: the filesystem is marked clean and needs no journal recovery (a
frozen or unmounted ext4 is; a live mounted one is not, and neither is a crash-consistent
snapshot whose journal still holds allocations the bitmaps do not show yet), and the
free blocks the bitmaps list add up to the superblock's count. Anything else returns
None: every block is read. XFS volumes are read in full (not yet mapped)."""

from __future__ import annotations

import logging
import os
import re

from cdpcore import runcmd
from cdpcore.errors import CommandFailed

from .changes import Run

log = logging.getLogger("cdp.agent.fsmap")

_EXT_MAGIC_AT = 1024 + 56  # s_magic in the superblock, 1024 bytes into the volume
_EXT_MAGIC = b"\x53\xef"
_GROUP_FREE = re.compile(r"^\s+Free blocks: (.*)$")


def _field(text: str, name: str) -> str | None:
    m = re.search(rf"^{re.escape(name)}:\s*(.*)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


def parse_dumpe2fs(text: str) -> tuple[int, list[tuple[int, int]]] | None:
    """(filesystem block size, free (first, count) runs in filesystem blocks) from the
    output of `dumpe2fs`, or None when the map must not be trusted. Pure."""
    state, features = _field(text, "Filesystem state"), _field(text, "Filesystem features")
    block_size, sb_free = _field(text, "Block size"), _field(text, "Free blocks")
    if state != "clean" or features is None or block_size is None or sb_free is None:
        return None
    if "needs_recovery" in features.split():
        return None
    runs: list[tuple[int, int]] = []
    groups = 0
    for line in text.splitlines():
        m = _GROUP_FREE.match(line)
        if not m:
            continue
        groups += 1
        for item in filter(None, (s.strip() for s in m.group(1).split(","))):
            lo, _, hi = item.partition("-")
            first, last = int(lo), int(hi or lo)
            if last < first:
                return None
            runs.append((first, last - first + 1))
    if not groups or sum(n for _, n in runs) != int(sb_free):
        return None
    return int(block_size), runs


def free_block_runs(path: str, offset: int, size: int, block_size: int) -> list[Run] | None:
    """Runs of the volume's blocks (of `block_size` bytes, the volume at `offset` of
    `path`, `size` bytes long) that lie wholly in free filesystem space; None when the
    volume holds no trusted ext2/3/4 map."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            magic = os.pread(fd, 2, offset + _EXT_MAGIC_AT)
        finally:
            os.close(fd)
    except OSError:
        return None
    if magic != _EXT_MAGIC:
        return None
    try:
        # ext2fs_open takes I/O options after '?': the volume may start inside the file.
        out = runcmd.run_text(["dumpe2fs", f"{path}?offset={offset}"])
    except CommandFailed as exc:
        log.info("%s: no free-space map (%s); reading every block", path, exc)
        return None
    parsed = parse_dumpe2fs(out)
    if parsed is None:
        log.info("%s: filesystem not clean or map inconsistent; reading every block", path)
        return None
    return volume_runs(*parsed, size, block_size)


def volume_runs(fs_block: int, free: list[tuple[int, int]], size: int,
                block_size: int) -> list[Run]:
    """Free filesystem runs as runs of whole volume blocks inside the volume. Pure."""
    out: list[Run] = []
    for first, count in free:
        lo = -(-first * fs_block // block_size)
        hi = min((first + count) * fs_block, size) // block_size
        if hi > lo:
            out.append((lo, hi - lo))
    return out
