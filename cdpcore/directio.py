"""Direct I/O (O_DIRECT) for the bulk data paths: the agent reading a snapshot, the rescue
engine writing a restore target.

Why: a backup that streams a whole disk through the page cache evicts the applications'
cached data on the production server, and a restore that writes through it buffers
gigabytes of dirty pages that the next checkpoint's fsync must flush anyway. Direct I/O
moves the data between the device and a few reused buffers. On this project's VMs it is
also much cheaper: a page-cache page freed a few seconds earlier is returned to the host
(free page reporting) and must be faulted back in, so a buffered read of 2 GiB took 7.5 s
of which 6.7 s in the kernel, against 0.9 s direct (BENCHMARKS.md, "Direct I/O").

O_DIRECT needs the buffer address, the file offset and the length aligned to the device's
logical block size. ALIGN (4096) satisfies every logical block size in use (512 and 4096
bytes); callers do direct I/O only at offsets and lengths that are multiples of it and
fall back to buffered I/O otherwise, and wherever the file system refuses O_DIRECT.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress

ALIGN = 4096


def aligned(value: int) -> bool:
    return value % ALIGN == 0


def align_down(value: int) -> int:
    return value - value % ALIGN


def align_up(value: int) -> int:
    return -(-value // ALIGN) * ALIGN


def open_direct(path: str, flags: int) -> int | None:
    """`path` opened with O_DIRECT added to `flags`, or None where the file system does not
    support it (EINVAL); other errors raise as for os.open."""
    try:
        return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


class AlignedBuffer:
    """A page-aligned buffer (anonymous mmap) for direct I/O, reused for every transfer so
    its pages are faulted in once."""

    def __init__(self, size: int) -> None:
        self.size = align_up(max(size, ALIGN))
        # Private: a buffer that exists at a fork is not shared with the child.
        self._map = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self._map)

    def close(self) -> None:
        # A slice may outlive the call (held by the traceback of an error raised during a
        # transfer): then the map is unmapped when the last slice goes, and the error in
        # flight is not replaced by a BufferError.
        with suppress(BufferError):
            self.view.release()
            self._map.close()


class BufferPool:
    """Aligned buffers shared by threads (the server's request threads): a buffer is
    taken for one transfer and given back, so their pages stay faulted in."""

    def __init__(self, size: int, keep: int = 8) -> None:
        self.size, self.keep = size, keep
        self._free: list[AlignedBuffer] = []
        self._lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[AlignedBuffer]:
        with self._lock:
            buf = self._free.pop() if self._free else None
        buf = buf or AlignedBuffer(self.size)
        try:
            yield buf
        finally:
            with self._lock:
                if len(self._free) < self.keep:
                    self._free.append(buf)
                    buf = None
            if buf is not None:
                buf.close()


class DirectFile:
    """Bulk reads and writes of an open file: through a second descriptor opened with
    O_DIRECT and the aligned `buffer` where the file system supports it and the transfer
    can be aligned, through `fd` (the caller's buffered descriptor) otherwise. The first
    EINVAL from a direct transfer (an alignment the device does not accept) turns direct
    I/O off for this file. The caller owns `fd` and `buffer`."""

    def __init__(self, path: str, fd: int, flags: int, buffer: AlignedBuffer) -> None:
        self.fd, self.buffer = fd, buffer
        self._direct_fd = open_direct(path, flags)

    @property
    def direct(self) -> bool:
        return self._direct_fd is not None

    def close(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None

    def _refused(self, exc: OSError) -> None:
        if exc.errno != errno.EINVAL:
            raise exc
        self.close()

    def read(self, offset: int, length: int) -> memoryview:
        """Bytes [offset, offset + length) as a view into the buffer, valid until the next
        transfer; shorter only at the end of the file. `length` must fit the buffer less
        2 * ALIGN (the aligned span around it)."""
        if length > self.buffer.size - 2 * ALIGN:
            raise ValueError(f"read of {length} bytes does not fit a {self.buffer.size}-byte "
                             "buffer")
        start = align_down(offset)
        if self._direct_fd is not None:
            span = self.buffer.view[:align_up(offset + length) - start]
            try:
                got = _read_fully(self._direct_fd, span, start, direct=True)
                skip = offset - start
                return self.buffer.view[skip:skip + max(0, min(length, got - skip))]
            except OSError as exc:
                self._refused(exc)
        got = _read_fully(self.fd, self.buffer.view[:length], offset)
        return self.buffer.view[:got]

    def write(self, offset: int, pieces: Iterable[bytes | memoryview]) -> int:
        """Write the concatenation of `pieces` at `offset`; returns its length. Direct when
        `offset` is aligned, with a short unaligned tail (the end of a volume or a pack)
        written buffered: it starts on a page of its own, so no page is written both ways
        at once. Buffered when `offset` is not aligned."""
        if self._direct_fd is None or not aligned(offset):
            data = b"".join(pieces)
            write_fully(self.fd, memoryview(data), offset)
            return len(data)
        buf, fill, at, total = self.buffer, 0, offset, 0
        for piece in pieces:
            view = memoryview(piece).cast("B")
            total += len(view)
            while view:
                n = min(len(view), buf.size - fill)
                buf.view[fill:fill + n] = view[:n]
                fill, view = fill + n, view[n:]
                if fill == buf.size:
                    self._write_direct(at, buf.view[:fill])
                    at, fill = at + fill, 0
        cut = align_down(fill)
        if cut:
            self._write_direct(at, buf.view[:cut])
        if fill > cut:
            write_fully(self.fd, buf.view[cut:fill], at + cut)
        return total

    def _write_direct(self, offset: int, view: memoryview) -> None:
        while view:
            if self._direct_fd is None or not aligned(offset) or not aligned(len(view)):
                write_fully(self.fd, view, offset)
                return
            try:
                n = os.pwrite(self._direct_fd, view, offset)
            except OSError as exc:
                self._refused(exc)
                continue
            view, offset = view[n:], offset + n


def _read_fully(fd: int, view: memoryview, offset: int, *, direct: bool = False) -> int:
    """Read into `view` at `offset` until it is full or the file ends; bytes read. A direct
    read that stops off the alignment has reached the end of the file."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        got += n
        if n == 0 or (direct and not aligned(n)):
            break
    return got


def write_fully(fd: int, view: memoryview, offset: int) -> None:
    """pwrite all of `view` at `offset` (a write may return short)."""
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
