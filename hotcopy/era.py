"""dm-era change tracking (a mainline device-mapper target). An era device sits between
a volume and its users (`create_era`, once, while the volume is unused); the kernel then
records in which era each region was last written. At each point the agent opens a new era
(`checkpoint`) and asks `era_invalidate --written-since` (thin-provisioning-tools), on a
metadata snapshot, which regions were written since the era of the previous point.

Tracking is a hint: the agent records the device's era at the end of each point; any other
era at the next point (the device was recreated, its metadata reset, or someone else
checkpointed it) puts the chain in doubt, and the caller falls back to a full scan. The era of the checkpoint is taken *before* the snapshot, so a write racing with the
snapshot is read again at the next point, never missed.
"""

from __future__ import annotations

import os
import stat
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from cdpcore import runcmd

from .errors import SnapshotError

PREFIX = "cdpera-"
SECTOR = 512


@dataclass(frozen=True)
class EraDevice:
    name: str
    metadata: str  # major:minor of the metadata device
    origin: str  # major:minor of the tracked device
    block_sectors: int


def _devno(path: str) -> str:
    rdev = os.stat(path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def find_era(path: str) -> EraDevice | None:
    """The era device that tracks the block device `path` (path is the era device itself
    or its origin), if any."""
    if not os.path.exists("/dev/mapper/control") or not stat.S_ISBLK(os.stat(path).st_mode):
        return None
    listing = runcmd.run_text(["dmsetup", "ls", "--target", "era"], check=False)
    want = _devno(path)
    for line in listing.splitlines():
        fields = line.split()
        if not fields or fields[0] == "No":
            continue
        name = fields[0]
        table = runcmd.run_text(["dmsetup", "table", name]).split()
        # <start> <length> era <metadata dev> <origin dev> <block size>
        if len(table) >= 6 and table[2] == "era" and want in (
                table[4], _devno(f"/dev/mapper/{name}")):
            return EraDevice(name, table[3], table[4], int(table[5]))
    return None


def create_era(origin: str, metadata: str, name: str, block_sectors: int = 128) -> str:
    """Put an era device over `origin` (unused: users must switch to the new device)."""
    size = int(runcmd.run_text(["blockdev", "--getsz", origin]).strip())
    table = f"0 {size} era {metadata} {origin} {block_sectors}"
    runcmd.run(["dmsetup", "create", PREFIX + name, "--table", table])
    return f"/dev/mapper/{PREFIX}{name}"


def current_era(dev: EraDevice) -> int:
    # <metadata block size> <used>/<total> <current era> <held metadata root>
    status = runcmd.run_text(["dmsetup", "status", dev.name]).split()
    return int(status[5])


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
