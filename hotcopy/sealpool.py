"""Hashing, sealing and uploading on worker processes: zstd and AES-GCM do not scale across
threads here (bench/pipeline.py), processes do. Workers are forked once per backup and
inherit the codec (its keys are never pickled), the set of damaged chunks and the server
connection settings; each task names a segment of the snapshot, which the worker reads
and seals. The worker keeps the new chunks until it holds a request's worth, then its
upload thread uploads those over the worker's own connection while the worker seals on
(asking the server first which it lacks only while its answers show that much of a batch
is stored already: `transfer.Asking`); only IDs and counts cross the pipe back to the
parent. Before the point's index goes up, `SealPool.flush` reaches what the workers still
hold (less than a request's worth each): a worker holding much uploads it itself, beside
the others, and the small rests go up in one upload by the parent. Workers share no
mutable state and die with the parent (PR_SET_PDEATHSIG), as rescue/stream.py's do.

Long runs are read with direct I/O into the worker's aligned buffer (cdpcore.directio):
a full read of a disk must not evict the applications' page cache. Short runs (scattered
changed blocks) go through the page cache, where the parent's read-ahead has queued them
together."""

from __future__ import annotations

import ctypes
import errno
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cdpcore import format as fmt
from cdpcore.crypto import BlobCodec, is_zero
from cdpcore.directio import ALIGN, AlignedBuffer, DirectFile
from cdpcore.forkpool import fork_pool

from .errors import SourceError
from .remote import Remote
from .transfer import (
    BATCH_BYTES,
    Asking,
    RetryPolicy,
    Sender,
    Throttle,
    UploadStats,
    send_new_chunks,
)

_PR_SET_PDEATHSIG = 1
#: Runs at least this long are read with direct I/O, shorter ones through the page cache.
DIRECT_MIN = 256 * 1024
#: At the end of a point, a worker holding at least this much uploads it itself, beside
#: the others; the parent used to send every worker's rest (up to 8 MiB each) in turn, a
#: tail of 0.14-0.24 s in points of the benchmark's 2 GiB workload.
FLUSH_OWN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Segment:
    path: str  # the snapshot to read
    base: int  # byte offset of the volume in it
    #: (first block, block count) runs of the volume to read, sorted: one contiguous range
    #: for a full scan, many small ones for scattered changes (one task, not one each)
    runs: tuple[tuple[int, int], ...]
    volume_size: int
    block_size: int
    olds: bytes = b""  # last point's IDs of the runs' blocks, in order; empty: not trusted

    def ranges(self) -> list[tuple[int, int]]:
        """(byte offset in the snapshot, length) of each run; the volume's last block may
        be short."""
        bs = self.block_size
        return [(self.base + first * bs, min(count * bs, self.volume_size - first * bs))
                for first, count in self.runs]


@dataclass
class Sealed:
    ids: list[bytes]
    #: position in the segment's blocks -> sealed blob, for the first block of each non-zero ID
    #: that changed (or is damaged on the server)
    blobs: dict[int, bytes] = field(default_factory=dict)


@dataclass
class Stored:
    """What a worker answers for a segment: its IDs, and what it uploaded meanwhile (the
    segment's new chunks may wait in the worker until the next flush)."""

    ids: list[bytes]
    uploaded: UploadStats


@dataclass(frozen=True)
class Uploads:
    """Where and how the workers upload: each over its own connection (Remote clients
    forget their connections in a forked child), all under one bandwidth cap."""

    remote: Remote
    host: str
    policy: RetryPolicy
    throttle: Throttle
    #: Ask the server what it lacks before the first batch: the point may send much that it
    #: holds (a rescan after the agent's state was lost); else most of what is sent is new.
    ask_first: bool = True


@dataclass
class _Worker:
    codec: BlobCodec
    damaged: frozenset[bytes]
    uploads: Uploads | None = None
    flushed: threading.Barrier | None = None  # every worker takes one flush task
    asking: Asking = field(default_factory=Asking)
    #: sealed chunks not yet handed to the upload thread, by ID, and their bytes
    pending: dict[bytes, bytes] = field(default_factory=dict)
    pending_bytes: int = 0
    sending: Future[UploadStats] | None = None  # the batch being uploaded
    uploader: ThreadPoolExecutor | None = None
    files: dict[str, DirectFile] = field(default_factory=dict)
    buffer: AlignedBuffer | None = None  # shared by the files: one read at a time

    def open(self, path: str, longest: int) -> DirectFile:
        """The worker's reader of `path`, with a buffer for a run of `longest` bytes."""
        if self.buffer is None or self.buffer.size < longest + 2 * ALIGN:
            self.buffer = AlignedBuffer(longest + 2 * ALIGN)
            for known in self.files.values():
                known.buffer = self.buffer
        if path not in self.files:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self.files[path] = DirectFile(path, fd, os.O_RDONLY, self.buffer)
                except OSError:
                    os.close(fd)
                    raise
            except OSError as exc:
                raise SourceError(f"{path}: cannot open for reading: {exc.strerror}") from None
        return self.files[path]

    def close(self) -> None:
        for file in self.files.values():
            file.close()
            os.close(file.fd)
        self.files.clear()


_worker: _Worker | None = None


def _init(parent: int, codec: BlobCodec, damaged: frozenset[bytes], uploads: Uploads,
          flushed: threading.Barrier) -> None:
    global _worker
    # A killed agent must not leave workers behind.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    _worker = _Worker(codec, damaged, uploads, flushed,
                      Asking(present_share=1.0 if uploads.ask_first else 0.0))


def _read(file: DirectFile, path: str, at: int, length: int) -> bytes | memoryview:
    """One run: a view into the worker's buffer (valid until the next read) when direct."""
    try:
        data: bytes | memoryview = file.read(at, length) if length >= DIRECT_MIN \
            else os.pread(file.fd, length, at)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EIO, errno.ENOENT):
            raise SourceError(f"{path}: device vanished or failed while being read "
                              f"at byte {at}: {exc.strerror}") from None
        raise SourceError(f"{path}: read error: {exc.strerror}") from None
    if len(data) != length:
        raise SourceError(f"{path}: device shrank or vanished while being read "
                          f"(short read at byte {at})")
    return data


def read_ahead(fd: int, seg: Segment) -> None:
    """Ask the kernel to start reading a segment's short runs now (the parent, when it
    queues the task): scattered blocks then reach the disk together rather than one
    synchronous read at a time. Long runs are read direct, past the page cache."""
    for at, length in seg.ranges():
        if length < DIRECT_MIN:
            os.posix_fadvise(fd, at, length, os.POSIX_FADV_WILLNEED)


def seal_segment(seg: Segment) -> Sealed:
    """Runs in a worker: read, hash and seal one segment."""
    assert _worker is not None
    ranges = seg.ranges()
    file = _worker.open(seg.path, max(length for _, length in ranges))
    out = Sealed([])
    seen: set[bytes] = set()
    bs, size = seg.block_size, fmt.ID_SIZE
    j = 0
    for at, length in ranges:
        data = _read(file, seg.path, at, length)
        view = memoryview(data)
        for start in range(0, len(data), bs):
            block = bytes(view[start:start + bs])  # the one copy: compared, hashed, sealed
            old = seg.olds[j * size:(j + 1) * size] if seg.olds else None
            new_id = fmt.ZERO_ID if is_zero(block) else _worker.codec.keys.chunk_id(block)
            out.ids.append(new_id)
            if new_id != fmt.ZERO_ID and new_id not in seen and (
                    new_id != old or new_id in _worker.damaged):
                seen.add(new_id)
                out.blobs[j] = _worker.codec.seal(fmt.BLOB_KIND_CHUNK, new_id, block)
            j += 1
    return out


def _upload(batch: dict[bytes, bytes]) -> UploadStats:
    assert _worker is not None and _worker.uploads is not None
    up = _worker.uploads
    stats = UploadStats()
    send_new_chunks(Sender(up.remote, up.host, up.policy, up.throttle, stats), batch,
                    _worker.damaged, _worker.asking)
    return stats


def _sent() -> UploadStats:
    """Wait for the batch being uploaded, if any (its error is raised here)."""
    assert _worker is not None
    sending, _worker.sending = _worker.sending, None
    return sending.result() if sending is not None else UploadStats()


def _take_pending() -> dict[bytes, bytes]:
    assert _worker is not None
    batch, _worker.pending, _worker.pending_bytes = _worker.pending, {}, 0
    return batch


def seal_and_keep(seg: Segment) -> Stored:
    """Runs in a worker: seal one segment and keep its new chunks. Once the worker holds a
    request's worth (scattered changes: one request for many segments), they go to its
    upload thread, after the batch before them is through."""
    assert _worker is not None
    sealed = seal_segment(seg)
    for j, blob in sealed.blobs.items():
        if sealed.ids[j] not in _worker.pending:
            _worker.pending[sealed.ids[j]] = blob
            _worker.pending_bytes += len(blob)
    uploaded = UploadStats()
    if _worker.pending_bytes >= BATCH_BYTES:
        uploaded = _sent()
        if _worker.uploader is None:
            _worker.uploader = ThreadPoolExecutor(1, thread_name_prefix="cdp-upload")
        _worker.sending = _worker.uploader.submit(_upload, _take_pending())
    return Stored(sealed.ids, uploaded)


def _flush(_: int) -> tuple[UploadStats, dict[bytes, bytes], Asking]:
    """Runs in a worker: finish its upload, then upload what it still holds itself if that
    is at least FLUSH_OWN_BYTES (every worker at once), else hand it back (the parent
    sends the workers' small rests in one request: a small point costs one upload, not one
    per worker); and tell what its uploads learnt. Then wait for the others, so that each
    of the flush tasks lands on a different worker (also when an upload fails)."""
    assert _worker is not None and _worker.flushed is not None
    try:
        sent = _sent()
        if _worker.pending_bytes < FLUSH_OWN_BYTES:
            return sent, _take_pending(), _worker.asking
        sent.add(_upload(_take_pending()))
        return sent, {}, _worker.asking
    finally:
        _worker.flushed.wait()


class SealPool:
    """The forked workers, all started before the constructor returns: a fork while other
    threads run would copy locks they may hold."""

    def __init__(self, codec: BlobCodec, damaged: set[bytes], workers: int,
                 uploads: Uploads) -> None:
        self.workers = max(1, workers)
        self._damaged = frozenset(damaged)
        self._flushed = multiprocessing.get_context("fork").Barrier(self.workers)
        self._pool = fork_pool(self.workers, _init,
                               (os.getpid(), codec, self._damaged, uploads, self._flushed))

    def submit(self, seg: Segment) -> Future[Stored]:
        return self._pool.submit(seal_and_keep, seg)

    def flush(self, sender: Sender) -> UploadStats:
        """Get every chunk the workers hold onto the server (the rest of each worker through
        `sender`, which counts it); call with no segment in flight. Returns what the
        workers' own uploads sent."""
        total, rest = UploadStats(), {}
        asking = Asking(present_share=0.0)
        for done in [self._pool.submit(_flush, i) for i in range(self.workers)]:
            sent, held, learnt = done.result()
            total.add(sent)
            rest.update(held)
            asking.join(learnt)  # the rest is asked about if any worker would have asked
        send_new_chunks(sender, rest, self._damaged, asking)
        return total

    def shutdown(self, *, cancel: bool = False) -> None:
        """`cancel`: drop queued segments (the point has failed; each would only retry a
        failing server again), and release the workers waiting for a flush's other tasks:
        after a Ctrl-C while `flush` handed them out, those never come."""
        if cancel:
            self._flushed.abort()
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> SealPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(cancel=exc[0] is not None)
