"""The ext2/3/4 free-space map (hotcopy.fsmap, BackupOptions.skip_free) across on-disk
layouts whose bitmaps libext2fs must compute or find elsewhere: flex_bg groups whose
bitmaps and inode tables live in another group, BLOCK_UNINIT groups (with metadata_csum
and with the older uninit_bg), meta_bg descriptors, 1 KiB blocks (the first data block is
1), bigalloc clusters. Each real filesystem, made by mkfs.ext4 with files in many
directories and some deleted, has every run the map calls free overwritten with zeros;
e2fsck must then find nothing wrong and every kept file must read back the same. A block
bitmap whose checksum fails gives no map at all."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hotcopy.fsmap import free_block_runs

from .images import MiB

BLOCK = 16384

LAYOUTS = {
    "flex_bg, BLOCK_UNINIT groups, 1 KiB blocks": ["-b", "1024", "-G", "64"],
    "uninit_bg without metadata_csum": ["-O", "uninit_bg,^metadata_csum", "-G", "4"],
    "meta_bg": ["-O", "meta_bg,^resize_inode"],
    "no flex_bg": ["-O", "^flex_bg"],
    "bigalloc": ["-O", "bigalloc", "-C", "16384"],
}


def _filesystem(tmp_path: Path, mkfs: list[str]) -> tuple[Path, dict[str, bytes]]:
    """A 512 MiB ext4 image with files in 40 directories, every third one deleted:
    (image, kept files by path)."""
    src = tmp_path / "src"
    files: dict[str, bytes] = {}
    for i in range(40):
        (src / f"d{i}").mkdir(parents=True)
        for j in range(3):
            data = os.urandom(7000 * (j + 1) + 997 * i)
            (src / f"d{i}" / f"f{j}").write_bytes(data)
            files[f"/d{i}/f{j}"] = data
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(512 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", *mkfs, "-d", str(src), str(image)], check=True)
    gone = [name for k, name in enumerate(sorted(files)) if k % 3 == 0]
    subprocess.run(["debugfs", "-w", "-f", "-", str(image)], check=True, capture_output=True,
                   input="".join(f"rm {name}\n" for name in gone).encode())
    return image, {name: data for name, data in files.items() if name not in gone}


@pytest.mark.parametrize("mkfs", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_what_the_map_calls_free_holds_no_file_nor_metadata(
        tmp_path: Path, mkfs: list[str]) -> None:
    image, kept = _filesystem(tmp_path, mkfs)
    runs = free_block_runs(str(image), 0, 512 * MiB, BLOCK, "ext4")
    if "bigalloc" in mkfs:
        # dumpe2fs lists a free run of clusters by the first block of its last cluster:
        # the lists never add up to the superblock's count, and the map is not used
        assert runs is None
        return
    assert runs is not None
    assert sum(n for _, n in runs) * BLOCK > 256 * MiB  # the map is used, and skips a lot
    fd = os.open(image, os.O_WRONLY)
    try:
        for first, count in runs:
            os.pwrite(fd, bytes(count * BLOCK), first * BLOCK)
    finally:
        os.close(fd)
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    for name, data in kept.items():
        cat = subprocess.run(["debugfs", "-R", f"cat {name}", str(image)], check=True,
                             capture_output=True)
        assert cat.stdout == data, name


def test_a_block_bitmap_failing_its_checksum_gives_no_map(tmp_path: Path) -> None:
    image, _ = _filesystem(tmp_path, [])
    assert free_block_runs(str(image), 0, 512 * MiB, BLOCK, "ext4") is not None
    subprocess.run(["debugfs", "-w", "-R", "set_bg 0 block_bitmap_csum 0", str(image)],
                   check=True, capture_output=True)
    assert free_block_runs(str(image), 0, 512 * MiB, BLOCK, "ext4") is None
