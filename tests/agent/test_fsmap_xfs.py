"""Skipping what XFS marks free (BackupOptions.skip_free): the free-space B+trees read
with xfs_db, trusted only when the log holds nothing to replay but the superblock updates
a freeze leaves. Real XFS made by mkfs.xfs on a partition of a GPT image, mounted through
a loop device and frozen with fsfreeze while the agent reads the image, as the agent
freezes a mounted partition of a disk (this machine mounts loop devices)."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdpcore import runcmd
from cdpcore.api import PointInfo
from hotcopy.backup import BackupOptions, backup
from hotcopy.fsmap import MAX_FREE_RUNS, parse_xfs_db, xfs_log_settled
from hotcopy.verify import iter_volume, open_point
from tests.loopdev import mounted_loop

from .conftest import Agent
from .images import MiB

P1 = 1 * MiB
FS_BYTES = 304 * MiB  # mkfs.xfs refuses filesystems under 300 MB

LOG_HEAD = """\
xfs_logprint:
    data device: 0xffffffffffffffff
    log device: 0xffffffffffffffff daddr: 307248 length: 131072

"""
#: A frozen XFS: the log's records hold nothing but the superblock (taken from a run).
COVERED = LOG_HEAD + """    log tail: 26 head: 30 state: <DIRTY>


LOG REC AT LSN cycle 1 block 26 (0x1, 0x1a)
============================================================================
TRANS: tid:0x9ec37ae7  #items:2  trans:0x9ec37ae7  q:0x56341e176840
BUF: cnt:2 total:2 a:0x56341e16a7e0 len:24 a:0x56341e169e60 len:384
\tBUF:  #regs:2   start blkno:0x0   len:1   bmap size:1   flags:0x9000
\tSUPER Block Buffer:

LOG REC AT LSN cycle 1 block 28 (0x1, 0x1c)
============================================================================
TRANS: tid:0x2c48b2da  #items:2  trans:0x2c48b2da  q:0x56341e176840
BUF: cnt:2 total:2 a:0x56341e16a7e0 len:24 a:0x56341e169e60 len:384
\tBUF:  #regs:2   start blkno:0x0   len:1   bmap size:1   flags:0x9000
\tSUPER Block Buffer:
"""
#: A live XFS just written to: an AGF and an inode wait in the log.
DIRTY = LOG_HEAD + """    log tail: 60 head: 65 state: <DIRTY>


LOG REC AT LSN cycle 1 block 60 (0x1, 0x3c)
============================================================================
TRANS: tid:0xde2329bc  #items:18  trans:0xde2329bc  q:0x561d5bd8ba40
INO: cnt:3 total:3 a:0x561d5bd68d90 len:56 a:0x561d5bd7b470 len:176 a:0x561d5bd7b530 len:56
\tINODE: #regs:3   ino:0x80  flags:0x3   dsize:54
\tCORE inode:
BUF: cnt:2 total:2 a:0x561d5bd7b860 len:24 a:0x561d5bd7b8e0 len:128
\tBUF:  #regs:2   start blkno:0x1   len:1   bmap size:1   flags:0x2800
\tAGF Buffer: (XAGF)
"""
XFS_DB = """\
blocksize = 4096
agblocks = 19200
agcount = 2
rblocks = 0
logstart = 65542
    agno    agbno      len
       0        6        1
       0     3096     9728
       1       10    19190
   from      to extents  blocks    pct
      1       1       1       1   0.00
   8192   16383       1    9728  33.63
  16384   19200       1   19190  66.36
freeblks = 9728
flcount = 1
freeblks = 19190
flcount = 0
"""


def test_an_xfs_log_is_settled_when_clean_or_covered_only() -> None:
    assert xfs_log_settled(LOG_HEAD + "    log tail: 2 head: 2 state: <CLEAN>\n")
    assert xfs_log_settled(COVERED)
    assert not xfs_log_settled(DIRTY)
    assert not xfs_log_settled(COVERED.replace("blkno:0x0 ", "blkno:0x8 "))
    assert not xfs_log_settled(LOG_HEAD + "    log tail: 9 head: 12 state: <DIRTY>\n")
    assert not xfs_log_settled("xfs_logprint: unknown log format\n")


def _xfs(text: str, max_runs: int = MAX_FREE_RUNS) -> tuple[int, list[tuple[int, int]]] | None:
    return parse_xfs_db(text.splitlines(), max_runs)


def test_xfs_db_map_is_trusted_only_when_its_counts_agree() -> None:
    assert _xfs(XFS_DB) == (4096, [(6, 1), (3096, 9728), (19200 + 10, 19190)])
    assert _xfs(XFS_DB.replace("flcount = 1", "flcount = 2")) is None
    assert _xfs(XFS_DB.replace("rblocks = 0", "rblocks = 100")) is None
    assert _xfs(XFS_DB.replace("logstart = 65542", "logstart = 0")) is None  # external log
    assert _xfs(XFS_DB.replace("agcount = 2", "agcount = 3")) is None
    assert _xfs(XFS_DB.replace("blocksize = 4096\n", "")) is None
    assert _xfs(XFS_DB, max_runs=3) is not None
    assert _xfs(XFS_DB, max_runs=2) is None  # more runs than the agent may hold


@pytest.fixture(params=["partition", "whole"])
def xfs_image(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A mounted XFS on partition 1 of a GPT image (read through a loop device over the
    partition's range) or on a whole unpartitioned image (read directly):
    (image, mountpoint)."""
    image = tmp_path / "xfs.img"
    start = P1 if request.param == "partition" else 0
    with open(image, "wb") as f:
        f.truncate(start + FS_BYTES + (MiB if start else 0))
    if start:
        runcmd.run(["sfdisk", "-q", str(image)],
                   input=f"label: gpt\nstart={P1 // 512}, size={FS_BYTES // 512}\n".encode())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted_loop(image, mnt, "--offset", str(start), "--sizelimit", str(FS_BYTES),
                      mkfs=["mkfs.xfs", "-q"]):
        yield image, mnt


def _point(agent: Agent, image: Path, skip_free: bool) -> PointInfo:
    return backup(agent.remote, agent.host, agent.codec, [str(image)], agent.state_dir,
                  workers=2, options=BackupOptions(skip_free=skip_free, reflink=False))


def _files(mnt: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in mnt.iterdir()}


def test_a_frozen_xfs_point_skips_free_space_and_keeps_every_file(
        agent: Agent, xfs_image: tuple[Path, Path], tmp_path: Path) -> None:
    image, mnt = xfs_image
    (mnt / "keep.bin").write_bytes(os.urandom(3 * MiB))
    (mnt / "gone.bin").write_bytes(os.urandom(24 * MiB))
    runcmd.run(["sync"])
    (mnt / "gone.bin").unlink()  # its blocks are free now, their bytes still there
    runcmd.run(["fsfreeze", "--freeze", str(mnt)])
    expected = {"keep.bin": hashlib.sha256((mnt / "keep.bin").read_bytes()).hexdigest()}
    full = _point(agent, image, skip_free=False)
    info = _point(agent, image, skip_free=True)
    runcmd.run(["fsfreeze", "--unfreeze", str(mnt)])
    # The deleted file's 24 MiB are free: not read, and zeros in the point. (The image is
    # sparse: the rest of the free space, never written, was not read by either point.)
    assert info.stats.scanned_bytes <= full.stats.scanned_bytes - 23 * MiB
    assert info.stats.changed_bytes >= 23 * MiB

    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    (vol,) = [v for v in manifest.volumes if v.name.endswith((":p1", ":whole"))]
    restored = tmp_path / "p1.img"
    with open(restored, "wb") as f:
        for block in iter_volume(agent.remote, agent.host, agent.codec, vol):
            f.write(block)
    # The copy is the frozen filesystem: its log is replayed at mount (superblock
    # counters only), and then it must check clean with the kept file intact.
    copy = tmp_path / "copy"
    copy.mkdir()
    with mounted_loop(restored, copy, mount_options=("-o", "nouuid")):  # the source too
        assert _files(copy) == expected
    repair = subprocess.run(["xfs_repair", "-n", "-f", str(restored)], capture_output=True,
                            text=True)
    assert repair.returncode == 0, repair.stdout + repair.stderr


def test_a_live_xfs_with_changes_in_its_log_is_read_in_full(
        agent: Agent, xfs_image: tuple[Path, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    """Written to while it is read, not frozen: the log holds allocations the B+trees on
    disk may not show yet, so no map is trusted, and a deleted file's blocks are read.
    (Writes keep coming, so that XFS cannot cover its log meanwhile, as it does after
    about 30 idle seconds.)"""
    image, mnt = xfs_image
    (mnt / "gone.bin").write_bytes(os.urandom(24 * MiB))
    runcmd.run(["sync"])
    (mnt / "gone.bin").unlink()
    full = _point(agent, image, skip_free=False)
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            with open(mnt / f"new{n % 8}.bin", "wb") as f:
                f.write(os.urandom(64 * 1024))
                os.fsync(f.fileno())
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with caplog.at_level(logging.INFO, logger="cdp.agent.fsmap"):
            again = _point(agent, image, skip_free=True)
    finally:
        stop.set()
        writer.join()
    assert "XFS log holds changes to replay; reading every block" in caplog.text
    assert again.stats.scanned_bytes >= full.stats.scanned_bytes
