"""Where a partition table lives on a disk (pure): the sectors a new GPT or MBR written by
libparted occupies, the MBR's size limit, and a GPT's attribute bits read from the entries
themselves (no parted flag carries them all). Sector sizes vary (512 or 4096 bytes), the
GPT entry array does not: 128 entries of 128 bytes."""

from __future__ import annotations

import struct
import uuid
from typing import Any

from cdpcore.layout import Disk

#: Bytes of a GPT partition entry array as libparted and sfdisk write it.
GPT_ENTRY_ARRAY_BYTES = 128 * 128
#: An MBR partition's start and length are 32-bit sector counts.
MBR_MAX_SECTORS = 2**32 - 1
#: Bytes of sector 0 before the MBR disk signature and partition table: boot code.
BOOT_CODE_BYTES = 440
#: GPT attribute bits by the names sfdisk gives them; bits 48-63 are the partition
#: type's own ("GUID:48,63"), bits 3-47 are reserved.
_GPT_ATTR_NAMES = {0: "RequiredPartition", 1: "NoBlockIOProtocol", 2: "LegacyBIOSBootable"}
_GPT_TYPE_BITS = range(48, 64)


def gpt_entry_sectors(sector_size: int) -> int:
    return -(-GPT_ENTRY_ARRAY_BYTES // sector_size)


def backup_sectors(disk: Disk) -> int:
    """Sectors at the end of the disk taken by the table's backup copy (GPT: its header
    and entry array; MBR: none)."""
    return 1 + gpt_entry_sectors(disk.logical_sector_size) if disk.table == "gpt" else 0


def rewritten_by_table(disk: Disk) -> list[tuple[int, int]]:
    """Byte ranges of a boot area that the new partition table replaces on purpose: the
    MBR's disk signature and table, and for GPT the primary header and entry array."""
    ranges = [(BOOT_CODE_BYTES, 512)]
    if disk.table == "gpt":
        sector = disk.logical_sector_size
        ranges.append((sector, (2 + gpt_entry_sectors(sector)) * sector))
    return ranges


def listed_partitions(dump: Any, size: int) -> list[tuple[int, int]]:
    """Byte ranges (offset, length) of the partitions an `sfdisk --json` dump lists (an
    extended container and its logical partitions too), clipped to a disk of `size` bytes:
    a table copied from a larger disk may point past the end."""
    table = dump.get("partitiontable", {})
    sector = int(table.get("sectorsize", 512))
    out: list[tuple[int, int]] = []
    for part in table.get("partitions", []):
        start = int(part["start"]) * sector
        end = min(start + int(part["size"]) * sector, size)
        if start < end:
            out.append((start, end - start))
    return out


def outside(start: int, end: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [start, end) not covered by `ranges` (sorted, non-overlapping)."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if lo > start:
            out.append((start, min(lo, end)))
        start = max(start, hi)
        if start >= end:
            break
    if start < end:
        out.append((start, end))
    return [(a, b) for a, b in out if b > a]


def gpt_attributes(boot_area: bytes, sector: int) -> dict[str, str]:
    """Unique partition GUID -> its GPT attribute bits as sfdisk writes them
    ("RequiredPartition GUID:60,63"), read from the primary GPT header and entry array at
    the start of a disk (the boot area a restore copies); empty if there is no GPT."""
    header = boot_area[sector:sector + 92]
    if len(header) < 92 or header[:8] != b"EFI PART":
        return {}
    lba, count, size = struct.unpack_from("<QII", header, 72)
    out: dict[str, str] = {}
    for i in range(count if size >= 128 else 0):
        entry = boot_area[lba * sector + i * size:lba * sector + (i + 1) * size]
        if len(entry) < 128:
            break
        (bits,) = struct.unpack_from("<Q", entry, 48)
        if entry[:16] == bytes(16) or not bits:
            continue
        words = [name for bit, name in _GPT_ATTR_NAMES.items() if bits >> bit & 1]
        own = [str(bit) for bit in _GPT_TYPE_BITS if bits >> bit & 1]
        if own:
            words.append("GUID:" + ",".join(own))
        if words:  # reserved bits alone: nothing sfdisk can set
            out[str(uuid.UUID(bytes_le=entry[16:32]))] = " ".join(words)
    return out
