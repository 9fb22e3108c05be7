"""Where a partition table lives on a disk (pure): the sectors a new GPT or MBR written by
libparted occupies, and the MBR's size limit. Sector sizes vary (512 or 4096 bytes), the
GPT entry array does not: 128 entries of 128 bytes."""

from __future__ import annotations

from cdpcore.layout import Disk

#: Bytes of a GPT partition entry array as libparted and sfdisk write it.
GPT_ENTRY_ARRAY_BYTES = 128 * 128
#: An MBR partition's start and length are 32-bit sector counts.
MBR_MAX_SECTORS = 2**32 - 1
#: Bytes of sector 0 before the MBR disk signature and partition table: boot code.
BOOT_CODE_BYTES = 440


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
