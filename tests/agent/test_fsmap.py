"""Skipping what the filesystem marks free (BackupOptions.skip_free): the point holds
every file and all of ext4's metadata exactly, zeros in its free space, and reads less.
Real ext4 made by mkfs.ext4 at a partition's offset, a file deleted with debugfs so that
its old blocks are free but not zero."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from cdpcore.api import PointInfo
from cdpcore.layout import AMBIVALENT, Filesystem
from hotcopy.backup import BackupOptions, backup
from hotcopy.changes import subtract_runs
from hotcopy.fsmap import MAX_FREE_RUNS, free_block_runs, parse_dumpe2fs, volume_runs
from hotcopy.verify import iter_volume, open_point

from .conftest import Agent
from .images import MiB, zfs_label

P2 = 5 * MiB  # the ext4 partition of the GPT test image (24 MiB)
FS = f"?offset={P2}"

DUMPE2FS = """\
Filesystem state:         clean
Filesystem features:      has_journal ext_attr extent 64bit flex_bg metadata_csum
Free blocks:              7
Block size:               4096

Group 0: (Blocks 0-32767) csum 0x1234
  Free blocks: 10-12, 20
  Free inodes: 5-8192
Group 1: (Blocks 32768-65535)
  Free blocks:
Group 2: (Blocks 65536-70000)
  Free blocks: 69997-69999
"""


def _ext(text: str, max_runs: int = MAX_FREE_RUNS) -> tuple[int, list[tuple[int, int]]] | None:
    return parse_dumpe2fs(text.splitlines(), max_runs)


def test_dumpe2fs_map_is_trusted_only_when_clean_and_consistent() -> None:
    assert _ext(DUMPE2FS) == (4096, [(10, 3), (20, 1), (69997, 3)])
    assert _ext(DUMPE2FS.replace("clean", "not clean")) is None
    assert _ext(DUMPE2FS.replace("64bit", "64bit needs_recovery")) is None
    # the groups' lists must add up to the superblock's count
    assert _ext(DUMPE2FS.replace("Free blocks:              7",
                                 "Free blocks:              8")) is None
    # a map of more runs than the agent may hold is not used
    assert _ext(DUMPE2FS, max_runs=3) is not None
    assert _ext(DUMPE2FS, max_runs=2) is None


def test_free_runs_become_whole_volume_blocks_only() -> None:
    # 4 KiB filesystem blocks 10-12 cover no whole 16 KiB block; 16-23 cover blocks 4-5
    assert volume_runs(4096, [(10, 3), (16, 8)], 1 << 20, 16384) == [(4, 2)]
    # a free run past the volume's end is cut at it
    assert volume_runs(4096, [(60, 100)], 256 * 1024, 16384) == [(15, 1)]
    assert subtract_runs([(0, 16)], [(4, 2), (15, 1)]) == [(0, 4), (6, 9)]


def _cat(image: Path, name: str) -> bytes:
    return subprocess.run(["debugfs", "-R", f"cat {name}", f"{image}{FS}"], check=True,
                          capture_output=True).stdout


def _restore(agent: Agent, point_id: str, size: int, out: Path, part: int = 2,
             offset: int = P2) -> None:
    manifest = open_point(agent.remote, agent.host, agent.codec, point_id)
    (vol,) = [v for v in manifest.volumes if v.name.endswith(f"p{part}")]
    with open(out, "wb") as f:
        f.truncate(size)
        f.seek(offset)
        for block in iter_volume(agent.remote, agent.host, agent.codec, vol):
            f.write(block)


def _point(agent: Agent, image: Path, skip_free: bool) -> PointInfo:
    return backup(agent.remote, agent.host, agent.codec, [str(image)], agent.state_dir,
                  workers=2, options=BackupOptions(skip_free=skip_free))


def _deleted_file_image(image: Path, tmp_path: Path, offset: int = P2,
                        size: int = 24 * MiB) -> Path:
    """ext4 at `offset` of the image (partition 2 of the GPT test image) with keep.bin
    (3 MiB) and the blocks of a deleted 6 MiB file: free, but still holding its bytes.
    Returns the files' directory."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "keep.bin").write_bytes(os.urandom(3 * MiB))
    (files / "gone.bin").write_bytes(os.urandom(6 * MiB))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(files), "-E", f"offset={offset}",
                    str(image), f"{size // 1024}k"], check=True)
    subprocess.run(["debugfs", "-w", "-R", "rm /gone.bin", f"{image}?offset={offset}"],
                   check=True, capture_output=True)
    return files


def test_skip_free_point_has_every_file_and_zeros_in_free_space(
        agent: Agent, gpt_image: Path, tmp_path: Path) -> None:
    files = _deleted_file_image(gpt_image, tmp_path)
    full = _point(agent, gpt_image, skip_free=False)
    # the next point (trusted local state) skips the deleted file's 6 MiB, now free
    info = _point(agent, gpt_image, skip_free=True)
    assert info.stats.scanned_bytes <= full.stats.scanned_bytes - 6 * MiB
    restored = tmp_path / "restored.img"
    _restore(agent, info.point_id, os.path.getsize(gpt_image), restored)
    assert _cat(restored, "/keep.bin") == (files / "keep.bin").read_bytes()
    fsck = subprocess.run(["e2fsck", "-fn", f"{restored}{FS}"], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # where the source still holds the deleted file's bytes, the point holds zeros
    with open(gpt_image, "rb") as src, open(restored, "rb") as dst:
        src.seek(P2)
        dst.seek(P2)
        source, copy = src.read(24 * MiB), dst.read(24 * MiB)
    differing = [i for i in range(0, len(source), 16384)
                 if source[i:i + 16384] != copy[i:i + 16384]]
    assert len(differing) * 16384 >= 6 * MiB - 2 * 16384
    assert all(copy[i:i + 16384] == bytes(16384) for i in differing)


def test_a_filesystem_that_needs_recovery_is_read_in_full(
        agent: Agent, gpt_image: Path, tmp_path: Path) -> None:
    """A journal still to be replayed may allocate blocks the bitmaps show free."""
    _deleted_file_image(gpt_image, tmp_path)
    subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", f"{gpt_image}{FS}"],
                   check=True, capture_output=True)
    full = _point(agent, gpt_image, skip_free=False)
    again = _point(agent, gpt_image, skip_free=True)
    assert again.stats.scanned_bytes == full.stats.scanned_bytes


def test_an_ext_superblock_under_an_mbr_listing_partitions_gives_no_map(
        tmp_path: Path) -> None:
    """A disk once formatted whole, then given an MBR (sfdisk in a script, parted: they do
    not wipe) and a partition: the old superblock, bitmaps and all, lies untouched in the
    MBR gap (its inode tables, past it, are not read), and would call the partition's
    data free when the disk is copied whole."""
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mkfs.ext2", "-q", "-F", "-b", "4096", str(disk)], check=True)
    assert free_block_runs(str(disk), 0, 64 * MiB, 16384, "ext2")  # the filesystem's own map
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: dos\nstart=2048, type=83\n",
                   check=True)
    with open(disk, "r+b") as f:
        f.seek(MiB)
        f.write(os.urandom(63 * MiB))  # what the partition holds now
    assert free_block_runs(str(disk), 0, 64 * MiB, 16384, "ext2") is None


def test_the_map_is_read_only_for_the_filesystem_blkid_names(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mkfs.ext2", "-q", "-F", "-b", "4096", str(image)], check=True)
    assert free_block_runs(str(image), 0, 64 * MiB, 16384, "ext2")
    for other in (None, "xfs", "zfs_member", AMBIVALENT):
        assert free_block_runs(str(image), 0, 64 * MiB, 16384, other) is None, other


def test_an_old_ext_superblock_under_a_zfs_label_gives_no_map(
        agent: Agent, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A partition once ext4, now a ZFS vdev: ZFS leaves the first 8 KiB as they were, so
    the old superblock and its bitmaps still read as a clean ext4, and blkid finds both
    (an "ambivalent result"). The capture used to fail on every point (blkid's exit 8);
    the free-space map must not then decide what the vdev holds: every byte is copied."""
    image = tmp_path / "z.img"
    with open(image, "wb") as f:
        f.truncate(66 * MiB)
    subprocess.run(["sfdisk", "-q", str(image)], input=b"label: gpt\nstart=2048, size=64M\n",
                   check=True)
    _deleted_file_image(image, tmp_path, MiB, 64 * MiB)
    zfs_label(image, 65 * MiB)
    assert free_block_runs(str(image), MiB, 64 * MiB, 16384, "ext4")  # the old map
    info = _point(agent, image, skip_free=True)
    assert ("cdp.agent.capture", logging.WARNING,
            f"{image}: bytes {MiB}-{65 * MiB - 1} hold more than one filesystem signature "
            "(blkid: ambivalent result; `wipefs --no-act` lists them): recorded as "
            "'ambivalent', copied as they are, no block skipped as free") in caplog.record_tuples
    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    (part,) = manifest.layout.disk("z.img").partitions
    assert (part.role, part.filesystem) == ("data", Filesystem(type=AMBIVALENT))
    restored = tmp_path / "restored.img"
    _restore(agent, info.point_id, os.path.getsize(image), restored, part=1, offset=MiB)
    with open(image, "rb") as src, open(restored, "rb") as dst:
        src.seek(MiB)
        dst.seek(MiB)
        assert src.read(64 * MiB) == dst.read(64 * MiB)
