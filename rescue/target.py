"""Raw writes to a restore target (block device or image file): positioned writes (bulk
runs of blocks with direct I/O where aligned, cdpcore.directio), explicit zeroing (a hole
in a file, BLKZEROOUT on a device), wiping old signatures, and the lock a restore holds on
its targets."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from cdpcore import runcmd
from cdpcore.directio import AlignedBuffer, DirectFile, align_down, align_up, write_fully
from cdpcore.errors import CommandFailed, SafetyError, UsageError

from .tables import listed_partitions

BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a byte range of a block device
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
#: Bytes wiped at each end of a target: covers MBR/GPT headers and arrays, LVM labels
#: (sectors 0-3), MD superblocks (end and 4 KiB), and filesystem magic near the start.
WIPE_BYTES = 1024 * 1024
_ZEROS = bytes(4 * 1024 * 1024)
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
#: Where a restore's locks on block-device targets are (the rescue system's RAM disk).
LOCK_DIR = "/run/cdp-rescue/locks"


class Target:
    """An open target. Use as a context manager; every write is positioned.

    `direct_buffer`: size of the aligned buffer for write_run's direct I/O (0: every write
    goes through the page cache). `reads_zero`: whatever was not written reads as zeros,
    so zeroing is nothing to do: a thin LV just made, whose unprovisioned blocks read as
    zeros (zeroing them would provision them all and could fill an overcommitted pool)."""

    def __init__(self, path: str, direct_buffer: int = 0, reads_zero: bool = False) -> None:
        self.path = path
        self.reads_zero = reads_zero
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.is_device = stat.S_ISBLK(os.fstat(self.fd).st_mode)
        self._bulk: DirectFile | None = None
        if direct_buffer:
            try:
                self._bulk = DirectFile(path, self.fd, os.O_RDWR, AlignedBuffer(direct_buffer))
            except BaseException:
                os.close(self.fd)
                raise

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self._bulk is not None:
                self._bulk.close()
                self._bulk.buffer.close()
                self._bulk = None
        finally:
            os.close(self.fd)

    def write_run(self, offset: int, pieces: Sequence[bytes]) -> int:
        """Write the concatenation of `pieces` (a run of blocks) at `offset`, with direct
        I/O where possible (cdpcore.directio.DirectFile.write); returns its length."""
        if self._bulk is None:
            data = b"".join(pieces)
            self.write(offset, data)
            return len(data)
        return self._bulk.write(offset, pieces)

    def size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        write_fully(self.fd, memoryview(data), offset)

    def zero_ends(self, offset: int, size: int) -> None:
        """Zero the first and last WIPE_BYTES of the area [offset, offset + size), where
        old signatures live (GPT, LVM labels and btrfs at the start; the backup GPT, MD
        superblocks and ZFS labels at the end)."""
        head = min(WIPE_BYTES, size)
        tail = max(head, size - WIPE_BYTES)
        self.zero(offset, head)
        self.zero(offset + tail, size - tail)

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros, without writing them when possible."""
        if length <= 0 or self.reads_zero:
            return
        if self.is_device:
            # BLKZEROOUT goes past the page cache: only whole pages, which no other
            # worker writes, are zeroed with it. A page shared with a neighbouring block
            # (a volume starting off a 4 KiB boundary) is written with zeros through the
            # cache, where it meets the neighbour's write instead of racing it.
            lo, hi = align_up(offset), align_down(offset + length)
            if lo < hi:
                try:
                    fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", lo, hi - lo))
                except OSError:
                    pass  # a driver without zeroing: write zeros below
                else:
                    self._write_zeros(offset, lo - offset)
                    self._write_zeros(hi, offset + length - hi)
                    return
        elif _libc.fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                             ctypes.c_long(offset), ctypes.c_long(length)) == 0:
            return
        self._write_zeros(offset, length)

    def _write_zeros(self, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            n = min(len(_ZEROS), end - offset)
            self.write(offset, memoryview(_ZEROS)[:n])
            offset += n

    def sync(self) -> None:
        os.fsync(self.fd)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)


def wipe(path: str) -> None:
    """Remove every old signature so stale metadata cannot come back. A file is emptied
    (truncated to zero and back: all holes); a device gets `wipefs --all` and zeroed ends
    (primary and backup GPT, MD superblocks at the end, LVM labels at the start), and so
    do the partitions of its old table: their filesystems, PVs and MD superblocks would
    otherwise stay wherever the new layout leaves free space or a partition ends
    elsewhere, to be found again by blkid, LVM or mdadm in a partition made there later."""
    with Target(path) as target:
        size = target.size()
        if not target.is_device:
            os.ftruncate(target.fd, 0)
            os.ftruncate(target.fd, size)
            target.sync()
            return
    # The old partitions first, while the table that lists them is still there (also
    # when an interrupted wipe runs again).
    with Target(path) as target:
        for offset, length in old_partitions(path, size):
            target.zero_ends(offset, length)
        target.sync()
    runcmd.run(["wipefs", "--all", "--force", path])
    with Target(path) as target:
        target.zero_ends(0, size)
        target.sync()


def old_partitions(path: str, size: int) -> list[tuple[int, int]]:
    """Byte ranges of the partitions in the table `path` holds now; none when it has no
    table sfdisk reads (its signatures, if any, are the disk's own: wipefs's)."""
    argv = ["sfdisk", "--json", path]
    proc = runcmd.run(argv, check=False)
    if proc.returncode != 0:
        return []
    try:
        return listed_partitions(runcmd.parse_json(argv, proc.stdout.decode(errors="replace")),
                                 size)
    except (CommandFailed, KeyError, TypeError, ValueError):
        return []  # a table sfdisk cannot describe is wiped at the disk's ends only


@contextmanager
def locked(paths: Sequence[str]) -> Iterator[None]:
    """Hold an exclusive lock on each target while a restore runs: another restore (another
    process, whatever its state directory) that would write one of them is refused
    instead of writing it at the same time. An image file is locked itself; a block
    device through a file of LOCK_DIR named by its device number, not on its node: udev
    skips a disk locked there, and the LVM and boot loader steps wait for udev."""
    fds: list[int] = []
    try:
        for path in paths:
            lock = path
            try:
                if stat.S_ISBLK((st := os.stat(path)).st_mode):
                    os.makedirs(LOCK_DIR, exist_ok=True)
                    lock = os.path.join(LOCK_DIR, f"block-{os.major(st.st_rdev)}:"
                                        f"{os.minor(st.st_rdev)}.lock")
                    fds.append(os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
                else:
                    fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as exc:
                raise UsageError(f"cannot lock {path} for the restore: {lock}: "
                                 f"{exc.strerror or exc}") from None
            try:
                fcntl.flock(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SafetyError(f"refusing to write {path}: another restore is writing "
                                  "it now: wait for it to end, or stop it") from None
        yield
    finally:
        for fd in fds:
            os.close(fd)
