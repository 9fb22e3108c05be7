"""A byte range of a file or disk as a block device of its own (`losetup --offset
--sizelimit`), for tools that take a whole device: xfs_db, e2fsck, resize2fs. Works the
same on image files, on disks whose partition nodes do not exist, and on real disks.

The device is set to clear itself on its last close (the kernel's LO_FLAGS_AUTOCLEAR, as
`mount -o loop` does) while this process holds it open: a process killed while it uses
one (SIGKILL, the OOM killer) leaves no loop device behind, because the kernel closes the
dead process's descriptor."""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Iterator

from . import runcmd

# <linux/loop.h>
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
_LO_FLAGS_AUTOCLEAR = 4
#: struct loop_info64: device, inode, rdevice, offset, sizelimit (u64); number,
#: encrypt_type, encrypt_key_size, flags (u32); file name, crypt name (64 bytes each),
#: encrypt key (32 bytes), init (2 x u64).
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
_FLAGS_FIELD = 8


def set_autoclear(fd: int) -> None:
    """Have the loop device open as `fd` detach itself when its last opener closes it."""
    info = list(_LOOP_INFO64.unpack(fcntl.ioctl(fd, _LOOP_GET_STATUS64,
                                                bytes(_LOOP_INFO64.size))))
    info[_FLAGS_FIELD] |= _LO_FLAGS_AUTOCLEAR
    fcntl.ioctl(fd, _LOOP_SET_STATUS64, _LOOP_INFO64.pack(*info))


@contextlib.contextmanager
def range_loop(path: str, offset: int, size: int, *, read_only: bool = False,
               direct_io: bool = False) -> Iterator[str]:
    """A loop device showing bytes [offset, offset+size) of `path`, gone afterwards (also
    when this process is killed). `direct_io`: it reads `path` past its page cache
    (losetup falls back to the page cache where `path` refuses direct I/O)."""
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size),
            *(["--read-only"] if read_only else []),
            *(["--direct-io=on"] if direct_io else [])]
    dev = runcmd.run_text([*argv, path]).strip()
    try:
        held = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
        try:
            set_autoclear(held)
        except OSError:
            os.close(held)
            raise
    except OSError:
        runcmd.run(["losetup", "--detach", dev])
        raise
    try:
        yield dev
    finally:
        os.close(held)  # the last close: the kernel detaches the device
