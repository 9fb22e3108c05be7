"""A byte range of a file or disk as a block device of its own (`losetup --offset
--sizelimit`), for tools that take a whole device: xfs_db, e2fsck, resize2fs. Works the
same on image files, on disks whose partition nodes do not exist, and on real disks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from . import runcmd


@contextlib.contextmanager
def range_loop(path: str, offset: int, size: int, *, read_only: bool = False,
               direct_io: bool = False) -> Iterator[str]:
    """A loop device showing bytes [offset, offset+size) of `path`, detached afterwards.
    `direct_io`: it reads `path` past its page cache (losetup falls back to the page
    cache where `path` refuses direct I/O)."""
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size),
            *(["--read-only"] if read_only else []),
            *(["--direct-io=on"] if direct_io else [])]
    dev = runcmd.run_text([*argv, path]).strip()
    try:
        yield dev
    finally:
        runcmd.run(["losetup", "--detach", dev])
