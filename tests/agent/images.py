"""Disk images for the agent tests: real partition tables written with pyparted, GUIDs
and the MBR disk identifier set with sfdisk, ext4 made with mkfs.ext4 at the partition's
offset (no partition devices exist for loop devices here)."""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import tempfile
from pathlib import Path

import parted

from cdpcore import runcmd
from hotcopy.scan import data_ranges

MiB = 1024 * 1024
DISK_GUID = "6a1c1e3e-1b9f-4c0e-9d8a-2f0e5b7c9d11"
PART_GUIDS = ["0b7d3c4e-5f60-4a1b-8c2d-3e4f5a6b7c81", "1c8e4d5f-6071-4b2c-9d3e-4f5a6b7c8d92",
              "2d9f5e60-7182-4c3d-ae4f-5a6b7c8d9ea3"]
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
LINUX_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"
SWAP_GUID = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
FS_UUID = "3b5f2a1c-8d7e-4f60-9a1b-2c3d4e5f6a7b"
FS_LABEL = "rootfs"
MBR_ID = "0x1badcafe"

#: (start MiB, size MiB) of the partitions of both layouts.
GPT_PARTS = [(1, 4), (5, 24), (29, 2)]
DISK_MIB = 40


def _add(disk: parted.Disk, dev: parted.Device, start_mib: int, size_mib: int,
         kind: int = parted.PARTITION_NORMAL) -> parted.Partition:
    sectors = MiB // dev.sectorSize
    geom = parted.Geometry(dev, start=start_mib * sectors, length=size_mib * sectors)
    part = parted.Partition(disk=disk, type=kind, geometry=geom)
    disk.addPartition(part, constraint=parted.Constraint(exactGeom=geom))
    return part


def mkfs_ext4(path: Path, offset: int, size: int) -> None:
    runcmd.run(["mkfs.ext4", "-q", "-F", "-U", FS_UUID, "-L", FS_LABEL, "-E",
                f"offset={offset}", str(path), f"{size // 1024}k"])


#: The images made in this process, by table type: each is made once and copied, as
#: sfdisk sleeps 250 ms in every run (ten runs for a GPT image).
_MADE: dict[str, Path] = {}


def make_image(path: Path, table: str) -> Path:
    """A 40 MiB disk image at `path` with a `table` ("gpt" or "msdos") partition table and
    an ext4 filesystem: a byte-for-byte copy of the one made first in this process, with
    its holes where they were (tests count what the agent reads)."""
    if table not in _MADE:
        made = Path(tempfile.mkdtemp(prefix="cdp-test-image-"))
        atexit.register(shutil.rmtree, made, ignore_errors=True)
        _MADE[table] = _make(made / f"{table}.img", table)
    _copy_with_holes(_MADE[table], path)
    return path


def _copy_with_holes(src: Path, dst: Path) -> None:
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        size = os.fstat(f_in.fileno()).st_size
        for offset, length in data_ranges(f_in.fileno(), 0, size):
            f_in.seek(offset)
            f_out.seek(offset)
            f_out.write(f_in.read(length))
        f_out.truncate(size)


def _make(path: Path, table: str) -> Path:
    with open(path, "wb") as f:
        f.truncate(DISK_MIB * MiB)
    dev = parted.getDevice(str(path))
    disk = parted.freshDisk(dev, table)
    if table == "gpt":
        for start, size in GPT_PARTS:
            _add(disk, dev, start, size)
        disk.commit()
        runcmd.run(["sfdisk", "-q", "--disk-id", str(path), DISK_GUID])
        for n, (guid, type_guid, name) in enumerate(zip(
                PART_GUIDS, [ESP_GUID, LINUX_GUID, SWAP_GUID], ["esp", "root", "swap"],
                strict=True), start=1):
            runcmd.run(["sfdisk", "-q", "--part-uuid", str(path), str(n), guid])
            runcmd.run(["sfdisk", "-q", "--part-type", str(path), str(n), type_guid])
            runcmd.run(["sfdisk", "-q", "--part-label", str(path), str(n), name])
        mkfs_ext4(path, 5 * MiB, 24 * MiB)
    else:
        _add(disk, dev, 1, 24)
        _add(disk, dev, 25, 14, parted.PARTITION_EXTENDED)
        _add(disk, dev, 26, 6, parted.PARTITION_LOGICAL)
        _add(disk, dev, 33, 5, parted.PARTITION_LOGICAL)
        disk.commit()
        runcmd.run(["sfdisk", "-q", "--disk-id", str(path), MBR_ID])
        runcmd.run(["sfdisk", "-q", "--part-type", str(path), "5", "82"])
        runcmd.run(["sfdisk", "-q", "--part-type", str(path), "6", "83"])
        mkfs_ext4(path, 1 * MiB, 24 * MiB)
    return path


def zfs_label(path: Path, end: int) -> None:
    """What blkid takes for a ZFS vdev ending at byte `end` of `path` (64 MiB at least):
    the uberblock magic four times in the ring of its third label (`end` - 512 KiB, ring
    at 128 KiB into it). A ZFS pool made over an old ext4 leaves its superblock in place
    (ZFS leaves the first 8 KiB of a vdev as they were), so blkid finds both."""
    with open(path, "r+b") as f:
        for k in range(4):
            f.seek(end - 512 * 1024 + 128 * 1024 + k * 1024)
            f.write(struct.pack("<Q", 0x00BAB10C))
