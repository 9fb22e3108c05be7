"""Streaming one volume of a point onto a target region.

Worker threads fetch batches of chunks, decrypt, decompress and verify them (each block's
keyed ID must match: BlobCodec.open_block); the calling thread writes the batches in
order with large positioned writes, coalescing neighbouring blocks, and zeroes all-zero
runs explicitly (holes in files, BLKZEROOUT on devices) instead of writing them. A block
that fails verification stops the volume with its exact byte range named; nothing
unverified is written, and everything before it is synced and checkpointed for resume.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

from cdpcore import format as fmt
from cdpcore.api import MAX_IDS_PER_REQUEST, ObjectKind
from cdpcore.crypto import BlobCodec
from cdpcore.errors import (
    ConnectionFailed,
    FormatError,
    IntegrityError,
    NotFoundError,
    ServerError,
)
from cdpcore.index import Geometry, PageSource, iter_block_ids
from cdpcore.manifest import VolumeRecord

from .target import Target

log = logging.getLogger("cdp.rescue.stream")
Batch = list[tuple[int, bytes]]


class ChunkSource(Protocol):
    def fetch(self, host: str, kind: ObjectKind, ids: list[bytes]) -> dict[bytes, bytes]: ...

    def page_source(self, host: str) -> PageSource: ...


class BlockDamaged(IntegrityError):
    """A block of a volume failed verification or is missing on the server."""

    def __init__(self, volume: str, offset: int, length: int, chunk: bytes, why: str) -> None:
        self.volume, self.offset, self.length, self.chunk = volume, offset, length, chunk
        super().__init__(f"volume {volume}: bytes {offset}-{offset + length - 1} (chunk "
                         f"{chunk.hex()[:16]}…) {why}; the volume was stopped there and "
                         "nothing unverified was written")


@dataclass
class StreamOptions:
    workers: int = 4
    batch_bytes: int = 4 * 1024 * 1024
    #: Sync the target and save the resume point after this many bytes.
    checkpoint_bytes: int = 64 * 1024 * 1024
    retries: int = 4
    retry_delay: float = 0.5


@dataclass
class StreamResult:
    written: int = 0  # bytes of data written
    zeroed: int = 0  # bytes of all-zero blocks made zero without writing them
    resumed: int = 0  # bytes skipped because a previous run finished them


def _fetch(src: ChunkSource, host: str, ids: list[bytes], opts: StreamOptions
           ) -> dict[bytes, bytes]:
    for attempt in range(opts.retries + 1):
        try:
            return src.fetch(host, ObjectKind.chunks, ids)
        except ServerError as exc:
            transient = isinstance(exc, ConnectionFailed) or (exc.status or 0) >= 500
            if not transient or attempt == opts.retries:
                raise
            log.warning("fetch failed (%s); retry %d of %d", exc, attempt + 1, opts.retries)
            time.sleep(opts.retry_delay * 2**attempt)
    raise AssertionError("unreachable")


def _load(src: ChunkSource, host: str, codec: BlobCodec, vol: VolumeRecord, batch: Batch,
          opts: StreamOptions) -> list[tuple[int, bytes | None]]:
    geo = vol.geometry
    wanted = sorted({cid for _, cid in batch if cid != fmt.ZERO_ID})
    blobs: dict[bytes, bytes] = {}
    for start in range(0, len(wanted), MAX_IDS_PER_REQUEST):
        part = wanted[start:start + MAX_IDS_PER_REQUEST]
        try:
            blobs.update(_fetch(src, host, part, opts))
        except (IntegrityError, NotFoundError, FormatError):
            # One bad or missing object fails the whole request: fetch one by one so the
            # damaged block (and only it) is named below.
            for cid in part:
                try:
                    blobs.update(_fetch(src, host, [cid], opts))
                except (IntegrityError, NotFoundError, FormatError):
                    continue
    plain: dict[bytes, bytes] = {}
    out: list[tuple[int, bytes | None]] = []
    for index, cid in batch:
        if cid == fmt.ZERO_ID:
            out.append((index, None))
            continue
        where = (vol.name, index * vol.block_size, geo.block_length(index), cid)
        if cid not in plain:
            blob = blobs.get(cid)
            if blob is None:
                raise BlockDamaged(*where, "is missing or damaged on the server")
            try:
                plain[cid] = codec.open_block(cid, blob)
            except (IntegrityError, FormatError) as exc:
                raise BlockDamaged(*where, f"failed verification: {exc}") from None
        data = plain[cid]
        if len(data) != geo.block_length(index):
            raise BlockDamaged(*where, f"holds {len(data)} bytes where the volume has "
                               f"{geo.block_length(index)}")
        out.append((index, data))
    return out


def _batches(ids: Iterator[tuple[int, bytes]], size: int) -> Iterator[Batch]:
    while batch := list(islice(ids, size)):
        yield batch


def _write(target: Target, base: int, geo: Geometry, blocks: list[tuple[int, bytes | None]],
           result: StreamResult) -> None:
    """Write one verified batch: each run of neighbouring data blocks in one pwrite, each
    run of zero blocks as one zeroing call."""
    run: list[bytes] = []
    run_start = zero_start = -1
    zero_len = 0

    def flush() -> None:
        nonlocal run, run_start, zero_start, zero_len
        if run:
            data = b"".join(run)
            target.write(base + run_start * geo.block_size, data)
            result.written += len(data)
            run, run_start = [], -1
        if zero_len:
            target.zero(base + zero_start * geo.block_size, zero_len)
            result.zeroed += zero_len
            zero_start, zero_len = -1, 0

    for index, data in blocks:
        if data is None:
            if run:
                flush()
            if zero_len == 0:
                zero_start = index
            zero_len += geo.block_length(index)
        else:
            if zero_len:
                flush()
            if not run:
                run_start = index
            run.append(data)
    flush()


def stream_volume(src: ChunkSource, host: str, codec: BlobCodec, vol: VolumeRecord,
                  target: Target, base: int, *, start_block: int = 0,
                  options: StreamOptions | None = None,
                  on_progress: Callable[[int], None] | None = None,
                  on_checkpoint: Callable[[int], None] | None = None) -> StreamResult:
    """Restore `vol` to `target` at byte `base`, from block `start_block` on. Calls
    `on_progress(bytes)` as blocks land and `on_checkpoint(blocks)` after each sync with
    the number of leading blocks that are safely on the target."""
    opts = options or StreamOptions()
    geo = vol.geometry
    result = StreamResult(resumed=min(start_block * vol.block_size, vol.size))
    ids = (item for item in iter_block_ids(geo, src.page_source(host), vol.root_id)
           if item[0] >= start_block)
    per_batch = max(1, min(opts.batch_bytes // vol.block_size, MAX_IDS_PER_REQUEST))
    done_blocks, unsynced = start_block, 0

    def checkpoint() -> None:
        nonlocal unsynced
        target.sync()
        unsynced = 0
        if on_checkpoint:
            on_checkpoint(done_blocks)

    with ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="cdp-fetch") as pool:
        pending: deque[Future[list[tuple[int, bytes | None]]]] = deque()
        batches = _batches(ids, per_batch)
        try:
            while True:
                while len(pending) < 2 * opts.workers:
                    batch = next(batches, None)
                    if batch is None:
                        break
                    pending.append(pool.submit(_load, src, host, codec, vol, batch, opts))
                if not pending:
                    break
                blocks = pending.popleft().result()
                before = result.written + result.zeroed
                _write(target, base, geo, blocks, result)
                landed = result.written + result.zeroed - before
                done_blocks = blocks[-1][0] + 1
                unsynced += landed
                if on_progress:
                    on_progress(landed)
                if unsynced >= opts.checkpoint_bytes:
                    checkpoint()
        except BaseException:
            for fut in pending:
                fut.cancel()
            checkpoint()  # what was written before the failure is verified: keep it
            raise
    checkpoint()
    return result
