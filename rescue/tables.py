"""Where a partition table lives on a disk (pure): the sectors a new GPT or MBR written by
libparted occupies, the MBR's size limit, and a GPT's attribute bits read from the entries
themselves (no parted flag carries them all). Sector sizes vary (512 or 4096 bytes), and
so does the GPT entry array: 128 entries of 128 bytes as libparted and sfdisk write it, or
as many as the highest partition number needs (a table resized with `sgdisk
--resize-table` or sfdisk's `table-length`), which moves the first usable sector."""

from __future__ import annotations

import struct
import uuid
from typing import Any

from cdpcore.layout import Disk

#: Bytes of a GPT partition entry.
GPT_ENTRY_BYTES = 128
#: Entries of a GPT entry array as libparted and sfdisk write it, and the fewest the
#: UEFI specification allows (16 KiB).
GPT_MIN_ENTRIES = 128
#: The last sector an MBR partition may use: its start and length are 32-bit sector
#: counts, and fdisk and sfdisk end a partition that fills a 2 TiB disk there.
MBR_LAST_SECTOR = 2**32 - 1
#: Bytes of sector 0 before the MBR disk signature and partition table: boot code.
BOOT_CODE_BYTES = 440
#: GPT attribute bits by the names sfdisk gives them; bits 48-63 are the partition
#: type's own ("GUID:48,63"), bits 3-47 are reserved.
_GPT_ATTR_NAMES = {0: "RequiredPartition", 1: "NoBlockIOProtocol", 2: "LegacyBIOSBootable"}
_GPT_TYPE_BITS = range(48, 64)


def gpt_entries(disk: Disk) -> int:
    """Entries of the GPT a restore writes for `disk`: 128, or as many as its highest
    partition number needs (partition N is entry N), rounded up to fill the array's last
    sector as gdisk rounds (200 at 512-byte sectors; 224 at 4096). A source's own array
    is at least as long, so its partitions start past the new one."""
    highest = max((p.number for p in disk.partitions), default=0)
    per_sector = disk.logical_sector_size // GPT_ENTRY_BYTES
    return max(GPT_MIN_ENTRIES, -(-highest // per_sector) * per_sector)


def gpt_entry_sectors(disk: Disk) -> int:
    return gpt_entries(disk) * GPT_ENTRY_BYTES // disk.logical_sector_size


def first_usable_sector(disk: Disk) -> int:
    """The first sector a partition may start at: after the protective MBR, the GPT
    header and its entry array (34 for 128 entries of 512-byte sectors; 52 for 200);
    after the MBR."""
    return 2 + gpt_entry_sectors(disk) if disk.table == "gpt" else 1


def backup_sectors(disk: Disk) -> int:
    """Sectors at the end of the disk taken by the table's backup copy (GPT: its header
    and entry array; MBR: none)."""
    return 1 + gpt_entry_sectors(disk) if disk.table == "gpt" else 0


def rewritten_by_table(disk: Disk) -> list[tuple[int, int]]:
    """Byte ranges of a boot area that the new partition table replaces on purpose: the
    MBR's disk signature and table, and for GPT the primary header and entry array."""
    ranges = [(BOOT_CODE_BYTES, 512)]
    if disk.table == "gpt":
        sector = disk.logical_sector_size
        ranges.append((sector, first_usable_sector(disk) * sector))
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
