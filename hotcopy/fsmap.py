"""Blocks a volume's filesystem marks free, so a scan need not read or send them (as
partclone does): they become all-zero blocks of the point, and a half-empty disk costs
half. The map is read from the very view being backed up (the snapshot), so map and data
are of the same instant, and it is trusted only when it cannot be stale; anything else
returns None, and every block is read. The capture's blkid must name the filesystem the
map is read from: bytes where blkid finds more than one signature (a ZFS vdev or an md
member over an old ext4's superblock and bitmaps, which those formats leave in place) or
another filesystem are read in full.

- ext2/3/4, read with `dumpe2fs`: the filesystem is marked clean and needs no journal
  recovery (a frozen or unmounted ext4 is; a live mounted one is not, and neither is a
  crash-consistent snapshot whose journal still holds allocations the bitmaps do not show
  yet), and the free blocks the bitmaps list add up to the superblock's count.
- XFS, read with `xfs_db` (the free-space B+trees, `freesp -d`) and `xfs_logprint`: the
  log is clean (unmounted), or "covered" as a freeze leaves it (it holds nothing but
  superblock updates: every metadata change is already in place), the filesystem has an
  internal log and no realtime section, and the free extents add up to the allocation
  groups' counts (free blocks plus free-list blocks). A volume inside a disk is read
  through a fresh read-only loop device with direct I/O, past any stale page cache.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

from cdpcore import runcmd
from cdpcore.errors import CommandFailed
from cdpcore.loopdev import range_loop

from .changes import Run

log = logging.getLogger("cdp.agent.fsmap")

_EXT_MAGIC_AT = 1024 + 56  # s_magic in the superblock, 1024 bytes into the volume
_EXT_MAGIC = b"\x53\xef"
EXT_TYPES = ("ext2", "ext3", "ext4")  # blkid's names of what dumpe2fs maps
_GROUP_FREE = re.compile(r"^\s+Free blocks: (.*)$")
_XFS_MAGIC = b"XFSB"  # sb_magicnum, at byte 0 of the volume
_MBR_SIGNATURE = b"\x55\xaa"  # at byte 510, after the four 16-byte entries from byte 446
#: What `xfs_logprint -t` prints for a log that holds superblock updates only.
_COVERED_LOG_LINE = re.compile(
    r"^(LOG REC AT LSN .*|=+|TRANS: .*|BUF: cnt:.*"
    r"|\s+BUF:\s+#regs:\d+\s+start blkno:0x0\s.*|\s+SUPER Block Buffer:)$")
_XFS_FIELD = re.compile(r"^(\w+) = (\d+)$")
_XFS_EXTENT = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)$")


#: More free runs than this and the map is not used (the volume is read in full): it
#: would cost more memory than the agent's bound allows (about 100 bytes per run).
MAX_FREE_RUNS = 200_000
_EXT_HEADER = re.compile(r"^(Filesystem state|Filesystem features|Block size|Free blocks):"
                         r"\s*(.*)$")


def parse_dumpe2fs(lines: Iterable[str], max_runs: int = MAX_FREE_RUNS,
                   ) -> tuple[int, list[tuple[int, int]]] | None:
    """(filesystem block size, free (first, count) runs in filesystem blocks) from the
    output lines of `dumpe2fs`, or None when the map must not be trusted or has more
    than `max_runs` runs. Pure."""
    header: dict[str, str] = {}
    runs: list[tuple[int, int]] = []
    groups = 0
    for line in lines:
        if m := _EXT_HEADER.match(line):
            header.setdefault(m.group(1), m.group(2).strip())
            continue
        m = _GROUP_FREE.match(line)
        if not m:
            continue
        groups += 1
        for item in filter(None, (s.strip() for s in m.group(1).split(","))):
            lo, _, hi = item.partition("-")
            first, last = int(lo), int(hi or lo)
            if last < first or len(runs) >= max_runs:
                return None
            runs.append((first, last - first + 1))
    state, features = header.get("Filesystem state"), header.get("Filesystem features")
    block_size, sb_free = header.get("Block size"), header.get("Free blocks")
    if state != "clean" or features is None or block_size is None or sb_free is None:
        return None
    if "needs_recovery" in features.split():
        return None
    if not groups or sum(n for _, n in runs) != int(sb_free):
        return None
    return int(block_size), runs


def xfs_log_settled(logprint: str) -> bool:
    """Whether `xfs_logprint -t` shows a log with nothing to replay but superblock updates:
    clean, or covered as a freeze leaves it. Pure."""
    state = re.search(r"log tail: \d+ head: \d+ state: <(\w+)>", logprint)
    if state is None:
        return False
    if state.group(1) == "CLEAN":
        return True
    records = logprint[state.end():].splitlines()
    return any(r.startswith("TRANS:") for r in records) and all(
        _COVERED_LOG_LINE.match(r) for r in records if r.strip())


def parse_xfs_db(lines: Iterable[str], max_runs: int = MAX_FREE_RUNS,
                 ) -> tuple[int, list[tuple[int, int]]] | None:
    """(filesystem block size, free (first, count) runs in filesystem blocks) from the
    output lines of xfs_db running `sb 0`, `p blocksize agblocks agcount rblocks
    logstart`, `freesp -d`, then `agf N` and `p freeblks flcount` for every allocation
    group; None when the map must not be trusted or has more than `max_runs` runs.
    Pure."""
    fields: dict[str, list[int]] = {}
    extents: list[tuple[int, int, int]] = []
    for line in lines:
        if m := _XFS_FIELD.match(line.strip()):
            fields.setdefault(m.group(1), []).append(int(m.group(2)))
        elif m := _XFS_EXTENT.match(line):
            if len(extents) >= max_runs:
                return None
            extents.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
    try:
        (bsize,), (agblocks,), (agcount,) = (fields[k] for k in ("blocksize", "agblocks",
                                                                   "agcount"))
        (rblocks,), (logstart,) = fields["rblocks"], fields["logstart"]
        freeblks, flcount = fields["freeblks"], fields["flcount"]
    except (KeyError, ValueError):
        return None
    if rblocks or not logstart or len(freeblks) != agcount or len(flcount) != agcount:
        return None
    if sum(n for _, _, n in extents) != sum(freeblks) + sum(flcount):
        return None
    if any(ag >= agcount or first + n > agblocks for ag, first, n in extents):
        return None
    return bsize, [(ag * agblocks + first, n) for ag, first, n in sorted(extents)]


def _xfs_free(device: str) -> tuple[int, list[tuple[int, int]]] | None:
    logprint = runcmd.run_text(["xfs_logprint", "-t", device])
    if not xfs_log_settled(logprint):
        log.info("%s: XFS log holds changes to replay; reading every block", device)
        return None
    agcount = runcmd.run_text(["xfs_db", "-r", "-c", "sb 0", "-c", "p agcount", device])
    m = _XFS_FIELD.match(agcount.strip())
    if m is None:
        log.info("%s: xfs_db printed no allocation group count (%r); reading every block",
                 device, agcount.strip()[:80])
        return None
    # On stdin: a filesystem may have tens of thousands of allocation groups.
    script = "sb 0\np blocksize agblocks agcount rblocks logstart\nfreesp -d\n" + "".join(
        f"agf {ag}\np freeblks flcount\n" for ag in range(int(m.group(2))))
    parsed = parse_xfs_db(runcmd.run_lines(["xfs_db", "-r", device], input=script.encode()))
    if parsed is None:
        log.info("%s: XFS free-space map inconsistent or too fragmented; reading every "
                 "block", device)
    return parsed


def free_block_runs(path: str, offset: int, size: int, block_size: int,
                    fstype: str | None) -> list[Run] | None:
    """Runs of the volume's blocks (of `block_size` bytes, the volume at `offset` of
    `path`, `size` bytes long) that lie wholly in free filesystem space; None when the
    volume holds no trusted ext2/3/4 or XFS map. `fstype`: what blkid found there (the
    capture's probe); no other type than the map's own is trusted."""
    if fstype not in EXT_TYPES and fstype != "xfs":
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            magic = os.pread(fd, 2, offset + _EXT_MAGIC_AT)
            xfs_magic = os.pread(fd, 4, offset)
            sector0 = os.pread(fd, 512, offset)
        finally:
            os.close(fd)
    except OSError:
        return None
    if xfs_magic == _XFS_MAGIC and fstype == "xfs":
        try:
            if offset:
                # A partition of a disk: a fresh loop device over its range, reading with
                # direct I/O past any page cache of the disk (xfs_logprint reads through
                # one). Not for a volume at byte 0: a loop device left by a killed run
                # would hold an LVM snapshot open and stop its removal.
                with range_loop(path, offset, size, read_only=True, direct_io=True) as dev:
                    parsed = _xfs_free(dev)
            else:
                # An LVM snapshot (a new device that never changes), a disk whose cache
                # the freeze dropped, or an image file: its page cache is current.
                parsed = _xfs_free(path)
        except CommandFailed as exc:
            log.info("%s: no XFS free-space map (%s); reading every block", path, exc)
            return None
        return None if parsed is None else volume_runs(*parsed, size, block_size)
    if magic != _EXT_MAGIC or fstype not in EXT_TYPES:
        return None
    if sector0[510:] == _MBR_SIGNATURE and any(sector0[e + 4] for e in range(446, 510, 16)):
        # An MBR listing partitions (a disk copied whole): an ext superblock at byte 1024,
        # which an MBR leaves as it was, is one of a filesystem the disk held before.
        log.info("%s: an MBR with partitions holds an ext superblock left from before; "
                 "reading every block", path)
        return None
    try:
        # ext2fs_open takes I/O options after '?': the volume may start inside the file.
        parsed = parse_dumpe2fs(runcmd.run_lines(["dumpe2fs", f"{path}?offset={offset}"]))
    except CommandFailed as exc:
        log.info("%s: no free-space map (%s); reading every block", path, exc)
        return None
    if parsed is None:
        log.info("%s: filesystem not clean, map inconsistent or too fragmented; reading "
                 "every block", path)
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
