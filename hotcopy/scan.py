"""Reading a volume from its snapshot: hash every block (or only the blocks change
tracking names), compare with the IDs of the last point, and hand the blocks whose ID
changed to the uploader. Hashing runs on the worker pool (HMAC-SHA256 releases the GIL)
with a bounded window of segments in flight, so memory stays bounded for any volume."""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from cdpcore import format as fmt
from cdpcore.crypto import BlobCodec, is_zero
from cdpcore.index import Geometry

from .changes import Run
from .errors import SourceError
from .snapshot import ReadView
from .state import IdFile
from .transfer import Candidate, ChunkUploader

#: Bytes read and hashed per task.
SEGMENT_BYTES = 4 * 1024 * 1024
#: Above this many changed blocks, the index is rebuilt from the ID file rather than
#: patched, so the change map never grows without bound.
MAX_TRACKED_CHANGES = 1 << 18

#: A sequential scan releases the ID file's pages it is done with every this many blocks.
RELEASE_BLOCKS = 1 << 16

Progress = Callable[[int], None]


@dataclass
class ScanResult:
    changes: dict[int, bytes] | None  # block -> new ID; None: too many, rebuild the index
    changed_blocks: int = 0
    changed_bytes: int = 0
    scanned_bytes: int = 0
    healed: int = 0


def _hash_segment(codec: BlobCodec, data: bytes, block_size: int) -> list[bytes]:
    ids = []
    for start in range(0, len(data), block_size):
        block = memoryview(data)[start:start + block_size]
        ids.append(fmt.ZERO_ID if is_zero(block) else codec.keys.chunk_id(block))
    return ids


def _read(fd: int, view: ReadView, offset: int, length: int) -> bytes:
    try:
        data = os.pread(fd, length, view.offset + offset)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EIO, errno.ENOENT):
            raise SourceError(f"{view.path}: device vanished or failed while being read "
                              f"at byte {view.offset + offset}: {exc.strerror}") from None
        raise SourceError(f"{view.path}: read error: {exc.strerror}") from None
    if len(data) != length:
        raise SourceError(f"{view.path}: device shrank or vanished while being read "
                          f"(short read at byte {view.offset + offset})")
    return data


def _segments(runs: Iterable[Run], per_segment: int) -> Iterator[Run]:
    """Block runs cut into (first, count) pieces of at most `per_segment` blocks."""
    for first, count in runs:
        for start in range(first, first + count, per_segment):
            yield start, min(per_segment, first + count - start)


def scan_volume(view: ReadView, geometry: Geometry, ids: IdFile, *, trusted: bool,
                codec: BlobCodec, pool: Executor, uploader: ChunkUploader,
                damaged: set[bytes], only: Iterable[Run] | None = None,
                window: int = 8, progress: Progress | None = None) -> ScanResult:
    """`trusted`: the ID file holds the last point's IDs (else every non-zero block is a
    candidate and the server's missing answer decides). `only`: sorted, disjoint block
    runs to read (`changes.block_runs`: a change list or dm-era); None reads every block."""
    bs = geometry.block_size
    per_segment = max(1, SEGMENT_BYTES // bs)
    runs = _segments([(0, geometry.blocks)] if only is None else only, per_segment)
    result = ScanResult(changes={})
    inflight: deque[tuple[int, bytes, Future[list[bytes]]]] = deque()

    def drain_one() -> None:
        first, data, fut = inflight.popleft()
        for j, new_id in enumerate(fut.result()):
            index = first + j
            old = ids.get(index) if trusted else None
            heal = new_id in damaged
            if new_id == old and not heal:
                continue
            length = geometry.block_length(index)
            if new_id != old:
                result.changed_blocks += 1
                result.changed_bytes += length
                ids.put(index, new_id)
                if result.changes is not None:
                    result.changes[index] = new_id
                    if len(result.changes) > MAX_TRACKED_CHANGES:
                        result.changes = None
            if new_id != fmt.ZERO_ID:
                result.healed += heal
                block = data[j * bs:j * bs + length]
                uploader.add(Candidate(new_id, block, force=heal))

    try:
        fd = os.open(view.path, os.O_RDONLY)  # never opened for writing
    except OSError as exc:
        raise SourceError(f"{view.path}: cannot open for reading: {exc.strerror}") from None
    try:
        for first, count in runs:
            length = min(count * bs, geometry.size - first * bs)
            data = _read(fd, view, first * bs, length)
            result.scanned_bytes += length
            inflight.append((first, data, pool.submit(_hash_segment, codec, data, bs)))
            if len(inflight) >= window:
                drain_one()
            if only is None and first % RELEASE_BLOCKS < count:
                ids.release(first)
            if progress is not None:
                progress(length)
        while inflight:
            drain_one()
    finally:
        os.close(fd)
    view.check()
    return result
