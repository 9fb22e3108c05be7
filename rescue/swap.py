"""Recreating swap areas with their original UUID and label (they are not copied: swap
content is meaningless after a reboot, but /etc/fstab and resume= name the UUID)."""

from __future__ import annotations

import os
import tempfile

from cdpcore import runcmd

from .target import Target

#: The swap header lives in the first page; 64 KiB covers every page size Linux uses.
_HEADER_BYTES = 64 * 1024


def make_swap(path: str, offset: int, size: int, uuid: str | None, label: str | None,
              scratch_dir: str | None = None) -> None:
    """Write a swap header for an area of `size` bytes at `offset` of `path`. mkswap runs
    on a sparse scratch file of the same size, so this works at any offset of an image
    file or disk, with no partition device node needed. As mkswap would wipe the old
    signatures of a device it formats, both ends of the area are zeroed first: a reused
    disk's MD superblock (at the end), btrfs (64 KiB) or ZFS labels left there would make
    blkid report them instead of the swap, and its UUID would name no device."""
    argv = ["mkswap", "--force"]
    if uuid:
        argv += ["-U", uuid]
    if label:
        argv += ["-L", label]
    with tempfile.NamedTemporaryFile(dir=scratch_dir, prefix="swap-") as scratch:
        os.truncate(scratch.name, size)
        runcmd.run([*argv, scratch.name])
        header = os.pread(scratch.fileno(), _HEADER_BYTES, 0)
    with Target(path) as target:
        target.zero_ends(offset, size)
        target.write(offset, header[: min(len(header), size)])
        target.sync()
