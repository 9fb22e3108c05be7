"""dm-era change tracking (a mainline device-mapper target). An era device sits between
a volume and its users (`attach`, run by `cdp-agent era attach` at boot, before the
filesystem is mounted); the kernel then records in which era each region was last
written. At each point the agent opens a new era (`checkpoint`) and asks `era_invalidate
--written-since` (thin-provisioning-tools), on a metadata snapshot, which regions were
written since the era of the previous point.

Tracking is a hint: the agent records the device's era at the end of each point; any other
era at the next point (the device was recreated, its metadata reset, or someone else
checkpointed it) puts the chain in doubt, and the caller falls back to a full scan. The era of the checkpoint is taken *before* the snapshot, so a write racing with the
snapshot is read again at the next point, never missed.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdpcore import runcmd
from cdpcore.errors import CommandFailed, UsageError

from .errors import SnapshotError

PREFIX = "cdpera-"
SECTOR = 512
_SUPERBLOCK = 4096


@dataclass(frozen=True)
class EraDevice:
    name: str
    metadata: str  # major:minor of the metadata device
    origin: str  # major:minor of the tracked device
    block_sectors: int


def _devno(path: str) -> str:
    rdev = os.stat(path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def list_eras() -> list[EraDevice]:
    """Every dm-era device of the machine (none without device-mapper)."""
    if not os.path.exists("/dev/mapper/control"):
        return []
    listing = runcmd.run_text(["dmsetup", "ls", "--target", "era"], check=False)
    out = []
    for line in listing.splitlines():
        fields = line.split()
        if not fields or fields[0] == "No":
            continue
        table = runcmd.run_text(["dmsetup", "table", fields[0]]).split()
        # <start> <length> era <metadata dev> <origin dev> <block size>
        if len(table) >= 6 and table[2] == "era":
            out.append(EraDevice(fields[0], table[3], table[4], int(table[5])))
    return out


def find_era(path: str) -> EraDevice | None:
    """The era device that tracks the block device `path` (path is the era device itself
    or its origin), if any."""
    if not os.path.exists(path) or not stat.S_ISBLK(os.stat(path).st_mode):
        return None
    want = _devno(path)
    return next((dev for dev in list_eras()
                 if want in (dev.origin, _devno(f"/dev/mapper/{dev.name}"))), None)


def create_era(origin: str, metadata: str, name: str, block_sectors: int = 128) -> str:
    """Put an era device over `origin` (unused: users must switch to the new device)."""
    size = int(runcmd.run_text(["blockdev", "--getsz", origin]).strip())
    table = f"0 {size} era {metadata} {origin} {block_sectors}"
    runcmd.run(["dmsetup", "create", PREFIX + name, "--table", table])
    return f"/dev/mapper/{PREFIX}{name}"


def _check_unused(path: str) -> None:
    # O_EXCL on a block device fails while it is mounted or held by another device.
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_EXCL))
    except OSError as exc:
        raise SnapshotError(f"{path} is in use ({exc.strerror}): dm-era must be attached "
                            "before the filesystem is mounted (at boot)") from None


def attach(origin: str, metadata: str, name: str = "", block_sectors: int = 128,
           reset_unreadable: bool = False, wait: float = 0) -> str:
    """The boot-time setup: put an era device over `origin` (waiting up to `wait` seconds
    for both devices to appear) and return its path; an era device already tracking
    `origin` is kept. With `reset_unreadable`, metadata dm-era refuses (say, restored from
    a copy taken while in use) is wiped and tracking starts afresh: the agent notices the
    reset and runs a full scan."""
    deadline = time.monotonic() + wait
    while not (os.path.exists(origin) and os.path.exists(metadata)):
        if time.monotonic() >= deadline:
            raise SnapshotError(f"{origin} or {metadata} does not exist")
        time.sleep(0.5)
    existing = find_era(origin)
    if existing is not None:
        return f"/dev/mapper/{existing.name}"
    _check_unused(origin)
    _check_unused(metadata)
    name = name or Path(origin).name
    try:
        return create_era(origin, metadata, name, block_sectors)
    except CommandFailed:
        if not reset_unreadable:
            raise
    # dm-era formats fresh metadata when the superblock (its first 4 KiB) is all zeros.
    fd = os.open(metadata, os.O_WRONLY | os.O_EXCL)
    try:
        os.pwrite(fd, bytes(_SUPERBLOCK), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return create_era(origin, metadata, name, block_sectors)


def detach(name_or_path: str) -> EraDevice:
    """Remove the era device (named, or over the given origin): the filesystem on it
    must be unmounted. The volume itself is untouched."""
    dev = next((d for d in list_eras() if d.name in (name_or_path, PREFIX + name_or_path)),
               None) or find_era(name_or_path)
    if dev is None:
        raise UsageError(f"{name_or_path}: no dm-era device of that name or over that device")
    runcmd.run(["dmsetup", "remove", dev.name])
    return dev


def status(dev: EraDevice) -> dict[str, Any]:
    # <metadata block size> <used>/<total> <current era> <held metadata root>
    fields = runcmd.run_text(["dmsetup", "status", dev.name]).split()
    used, total = (int(x) for x in fields[4].split("/"))
    return {"name": dev.name, "device": f"/dev/mapper/{dev.name}", "origin": dev.origin,
            "metadata": dev.metadata, "block_bytes": dev.block_sectors * SECTOR,
            "current_era": int(fields[5]), "metadata_blocks_used": used,
            "metadata_blocks_total": total}


def current_era(dev: EraDevice) -> int:
    return int(status(dev)["current_era"])


def checkpoint(dev: EraDevice) -> int:
    """Open a new era; returns the era that was current (written-since it = what follows)."""
    era = current_era(dev)
    runcmd.run(["dmsetup", "message", dev.name, "0", "checkpoint"])
    return era


def written_since(dev: EraDevice, era: int) -> list[tuple[int, int]]:
    """Era-block ranges [begin, end) written in `era` or later."""
    runcmd.run(["dmsetup", "message", dev.name, "0", "take_metadata_snap"])
    try:
        with tempfile.TemporaryDirectory(prefix="cdp-era-") as tmp:
            node = Path(tmp) / "meta"
            major, minor = (int(x) for x in dev.metadata.split(":"))
            os.mknod(node, 0o600 | 0o060000, os.makedev(major, minor))
            xml = runcmd.run_text(["era_invalidate", "--written-since", str(era),
                                   "--metadata-snapshot", str(node)])
    finally:
        runcmd.run(["dmsetup", "message", dev.name, "0", "drop_metadata_snap"], check=False)
    return parse_blocks(xml)


def parse_blocks(xml: str) -> list[tuple[int, int]]:
    """era_invalidate's output: <blocks><block block="N"/><range begin="A" end="B"/></blocks>."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SnapshotError(f"era_invalidate printed unreadable output: {exc}") from None
    out = []
    for el in root:
        if el.tag == "block":
            b = int(el.attrib["block"])
            out.append((b, b + 1))
        elif el.tag == "range":
            out.append((int(el.attrib["begin"]), int(el.attrib["end"])))
    return out


def to_byte_ranges(ranges: list[tuple[int, int]], era_block_bytes: int,
                   ) -> list[tuple[int, int]]:
    """Era-block ranges [begin, end) as (offset, length) byte ranges of the device: the
    change list form `changes.block_runs` maps onto each volume."""
    return [(begin * era_block_bytes, (end - begin) * era_block_bytes)
            for begin, end in ranges if end > begin]
