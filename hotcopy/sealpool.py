"""Hashing, sealing and uploading on worker processes: zstd and AES-GCM do not scale across
threads here (bench/pipeline.py), processes do. Workers are forked once per backup and
inherit the codec (its keys are never pickled), the set of damaged chunks and the server
connection settings; each task names a segment of the snapshot, which the worker reads,
seals and uploads itself (asking the server first which of its new chunks it lacks), so
only IDs, fingerprints and counts cross the pipe back to the parent. Workers share no
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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from cdpcore import format as fmt
from cdpcore.api import ObjectKind
from cdpcore.crypto import BlobCodec, is_zero
from cdpcore.directio import ALIGN, AlignedBuffer, DirectFile

from .errors import SourceError
from .fingerprint import UNKNOWN, Fingerprinter
from .remote import Remote
from .transfer import RetryPolicy, Sender, Throttle, UploadStats

_PR_SET_PDEATHSIG = 1
#: Runs at least this long are read with direct I/O, shorter ones through the page cache.
DIRECT_MIN = 256 * 1024


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
    old_fps: bytes = b""  # their scan fingerprints (with olds; empty: hash every block)

    def ranges(self) -> list[tuple[int, int]]:
        """(byte offset in the snapshot, length) of each run; the volume's last block may
        be short."""
        bs = self.block_size
        return [(self.base + first * bs, min(count * bs, self.volume_size - first * bs))
                for first, count in self.runs]


@dataclass
class Sealed:
    ids: list[bytes]
    fps: bytes = b""  # the blocks' scan fingerprints, concatenated
    #: position in the segment's blocks -> sealed blob, for the first block of each non-zero ID
    #: that changed (or is damaged on the server)
    blobs: dict[int, bytes] = field(default_factory=dict)


@dataclass
class Stored:
    """What a worker answers for a segment once its new chunks are on the server."""

    ids: list[bytes]
    fps: bytes
    uploaded: UploadStats
    healed: int  # damaged chunks sent again


@dataclass(frozen=True)
class Uploads:
    """Where and how the workers upload: each over its own connection (Remote clients
    forget their connections in a forked child), all under one bandwidth cap."""

    remote: Remote
    host: str
    policy: RetryPolicy
    throttle: Throttle


@dataclass
class _Worker:
    codec: BlobCodec
    damaged: frozenset[bytes]
    fingerprint: Fingerprinter
    uploads: Uploads | None = None
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


def _init(parent: int, codec: BlobCodec, damaged: frozenset[bytes], uploads: Uploads) -> None:
    global _worker
    # A killed agent must not leave workers behind.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    _worker = _Worker(codec, damaged, Fingerprinter(codec.keys.id_key), uploads)


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
    fps: list[bytes] = []
    bs, size = seg.block_size, fmt.ID_SIZE
    fp_size = len(UNKNOWN)
    j = 0
    for at, length in ranges:
        data = _read(file, seg.path, at, length)
        for start in range(0, len(data), bs):
            block = memoryview(data)[start:start + bs]
            old = seg.olds[j * size:(j + 1) * size] if seg.olds else None
            if is_zero(block):
                new_id, fp = fmt.ZERO_ID, UNKNOWN
            else:
                fp = _worker.fingerprint(block)
                # An unchanged fingerprint is an unchanged block: its ID is the old one,
                # and the HMAC is not computed.
                same = fp == seg.old_fps[j * fp_size:(j + 1) * fp_size]
                new_id = old if same and old is not None and old != fmt.ZERO_ID \
                    else _worker.codec.keys.chunk_id(block)
            out.ids.append(new_id)
            fps.append(fp)
            if new_id != fmt.ZERO_ID and new_id not in seen and (
                    new_id != old or new_id in _worker.damaged):
                seen.add(new_id)
                out.blobs[j] = _worker.codec.seal(fmt.BLOB_KIND_CHUNK, new_id, bytes(block))
            j += 1
    out.fps = b"".join(fps)
    return out


def seal_and_upload(seg: Segment) -> Stored:
    """Runs in a worker: seal one segment, then upload the new chunks the server lacks
    (and every damaged one, which heals it), with the agent's retries."""
    assert _worker is not None and _worker.uploads is not None
    sealed = seal_segment(seg)
    up = _worker.uploads
    stats = UploadStats()
    sender = Sender(up.remote, up.host, up.policy, up.throttle, stats)
    new = [(sealed.ids[j], blob) for j, blob in sealed.blobs.items()]
    healing = {oid for oid, _ in new if oid in _worker.damaged}
    lacking = sender.missing(ObjectKind.chunks, [oid for oid, _ in new if oid not in healing])
    sender.send(ObjectKind.chunks, [(oid, blob) for oid, blob in new
                                    if oid in healing or oid in lacking])
    return Stored(sealed.ids, sealed.fps, stats, len(healing))


def open_pool(codec: BlobCodec, damaged: set[bytes], workers: int,
              uploads: Uploads) -> ProcessPoolExecutor:
    """Forked workers, all started before returning: fork while other threads run would
    copy locks they may hold."""
    pool = ProcessPoolExecutor(max_workers=max(1, workers),
                               mp_context=multiprocessing.get_context("fork"),
                               initializer=_init,
                               initargs=(os.getpid(), codec, frozenset(damaged), uploads))
    pool.submit(os.getpid).result()  # with fork, the first submit starts every worker
    return pool
