"""Fitting a captured partition layout onto a target disk (pure functions).

Policies on a larger target: `same` keeps every partition where it was; `grow-last` grows
the partition that ends last (and its extended container) to the end of the disk;
`proportional` grows data partitions in proportion to their size while the ESP, BIOS-boot,
/boot and swap partitions keep their size. A target too small for the layout is refused
with both sizes named. The first partition never moves, so the boot area stays valid.

A GPT gets as many entries as its highest partition number needs (`tables.gpt_entries`):
more than 128 move the first usable sector and take more at the end for the backup.
"""

from __future__ import annotations

import copy
from typing import Literal

from cdpcore.errors import FormatError, SafetyError, UsageError
from cdpcore.layout import Disk, Partition
from cdpcore.units import human

from .tables import MBR_LAST_SECTOR, backup_sectors, first_usable_sector, gpt_entries

ResizePolicy = Literal["same", "grow-last", "proportional"]
RESIZE_POLICIES: tuple[ResizePolicy, ...] = ("same", "grow-last", "proportional")

_ALIGN_BYTES = 1024 * 1024
_FIXED_ROLES = ("esp", "bios_boot", "boot", "swap")


def last_usable_sector(disk: Disk, size: int) -> int:
    """The last sector a partition may use on a target of `size` bytes: before the GPT's
    backup, and for MBR within the 32-bit sector counts (the 2 TiB limit at 512 bytes:
    sector 2^32 - 1 is the last, where fdisk and sfdisk end a partition that fills it)."""
    last = size // disk.logical_sector_size - 1 - backup_sectors(disk)
    return last if disk.table == "gpt" else min(last, MBR_LAST_SECTOR)


def required_size(disk: Disk) -> int:
    """Smallest target (bytes) that holds the layout unchanged."""
    if not disk.partitions:
        return disk.size
    end = max(p.start + p.length for p in disk.partitions)
    return (end + backup_sectors(disk)) * disk.logical_sector_size


def fit(disk: Disk, target_size: int, policy: ResizePolicy, target_name: str) -> Disk:
    """The source disk's layout as it will be written on a target of `target_size` bytes."""
    # Before anything is written: a GPT of fewer than 128 entries (sfdisk makes them,
    # UEFI wants 16 KiB) may have a partition where the new table's entries go.
    first = first_usable_sector(disk)
    early = [p for p in disk.partitions if p.start < first]
    if early:
        table = f"the {gpt_entries(disk)}-entry GPT" if disk.table == "gpt" else "the MBR"
        raise FormatError(
            f"source disk {disk.name}: partition {early[0].number} starts at sector "
            f"{early[0].start}, inside {table} a restore writes (sectors 0-{first - 1})")
    need = required_size(disk)
    if target_size < need:
        raise SafetyError(
            f"target {target_name} is too small for source disk {disk.name}: it has "
            f"{human(target_size)} ({target_size} bytes), the layout needs at least "
            f"{human(need)} ({need} bytes)")
    out = copy.deepcopy(disk)
    out.size = target_size
    if not disk.partitions or policy == "same" or target_size == disk.size:
        return out
    last = last_usable_sector(disk, target_size)
    if policy == "grow-last":
        _grow_last(out.partitions, last)
    elif policy == "proportional":
        _grow_proportional(out, last)
    else:
        raise UsageError(f"unknown resize policy {policy!r}: use one of "
                         + ", ".join(RESIZE_POLICIES))
    return out


def _end(part: Partition) -> int:
    return part.start + part.length


def _grow_last(parts: list[Partition], last: int) -> None:
    # The partition that ends last; on a tie, the logical one rather than its container.
    tail = max(parts, key=lambda p: (_end(p), p.kind != "extended"))
    if tail.kind == "extended":
        # A container with room after its last logical partition: that one grows with it.
        # An empty container grows alone: a primary before it would grow into it (a table
        # libparted refuses to write), and it may be all the disk has.
        tail = max((p for p in parts if p.kind == "logical"), key=_end, default=tail)
    if tail.role in _FIXED_ROLES:
        return  # a swap or boot partition at the end keeps its size
    if _end(tail) > last:
        return  # already at (or past) the MBR's last sector: growing never shrinks it
    tail.length = last - tail.start + 1
    if tail.kind == "logical":
        for part in parts:
            if part.kind == "extended":
                part.length = last - part.start + 1


def _grow_proportional(disk: Disk, last: int) -> None:
    parts = sorted(disk.partitions, key=lambda p: p.start)
    if any(p.kind != "primary" for p in parts):
        raise UsageError(f"disk {disk.name} has an extended partition: proportional resize "
                         "supports primary partitions only (use --resize grow-last or same)")
    # GRUB's boot code in the MBR holds the absolute sector of its core image in a
    # BIOS-boot partition: nothing before one grows, so that it does not move.
    pinned = max((i for i, p in enumerate(parts) if p.role == "bios_boot"), default=-1)
    growable = [p for i, p in enumerate(parts) if i > pinned and p.role not in _FIXED_ROLES]
    old_end = max(p.start + p.length for p in parts)
    extra = last + 1 - old_end
    total = sum(p.length for p in growable)
    if not growable or extra <= 0 or total == 0:
        return
    align = max(1, _ALIGN_BYTES // disk.logical_sector_size)
    shift = 0
    for part in parts:
        part.start += shift
        if part in growable:
            # Whole alignment units keep every following partition aligned as before.
            grow = (extra * part.length // total) // align * align
            part.length += grow
            shift += grow
