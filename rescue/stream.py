"""Streaming one volume of a point onto a target region, on every core.

zstd and AES-GCM do not scale across threads here (bench/pipeline.py), processes do: the
parent walks the volume's index and hands batches of (block index, chunk ID) to a pool of
worker processes; each worker fetches its batch from the server, decrypts, decompresses
and verifies every block (its keyed ID must match: BlobCodec.open_block) and writes the
verified blocks with large positioned writes, coalescing neighbours, and zeroes all-zero
runs explicitly (holes in files, BLKZEROOUT on devices). Only small tuples cross the
process boundary, and at most two batches per worker are in flight: memory stays bounded.

The parent takes results in volume order, so the blocks it has seen are a contiguous
prefix: after syncing the target (on a thread of its own, so the pipeline keeps moving
while the disk flushes) it checkpoints that prefix for resume. A block that fails
verification stops the volume with its exact byte range named; the blocks before it are
written (verified), it and nothing unverified after it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
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
    TargetError,
)
from cdpcore.forkpool import fork_pool
from cdpcore.index import PageSource, iter_block_ids
from cdpcore.manifest import VolumeRecord

from .target import Target

log = logging.getLogger("cdp.rescue.stream")
_PR_SET_PDEATHSIG = 1
Batch = list[tuple[int, bytes]]


class ChunkSource(Protocol):
    def fetch(self, host: str, kind: ObjectKind, ids: list[bytes]) -> dict[bytes, bytes]: ...

    def page_source(self, host: str) -> PageSource: ...


class BlockDamaged(IntegrityError):
    """A block of a volume failed verification or is missing on the server."""

    def __init__(self, volume: str, offset: int, length: int, chunk: bytes, why: str) -> None:
        self.volume, self.offset, self.length, self.chunk = volume, offset, length, chunk
        # No chunk: the index that names the chunks of these bytes is what is damaged.
        what = f" (chunk {chunk.hex()[:16]}…)" if chunk else ""
        super().__init__(f"volume {volume}: bytes {offset}-{offset + length - 1}{what} "
                         f"{why}; the volume was stopped there and nothing unverified was "
                         "written")


#: Most worker processes a restore takes (each forks, holds its batches and a connection):
#: more only fork the machine into the ground.
MAX_WORKERS = 64


def _default_workers() -> int:
    # Two per core: while one waits for the server, the other decrypts.
    return min(16, 2 * (os.cpu_count() or 1))


@dataclass
class StreamOptions:
    workers: int = field(default_factory=_default_workers)  # worker processes
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


@dataclass(frozen=True)
class _Damage:
    offset: int
    length: int
    chunk: bytes
    why: str


@dataclass(frozen=True)
class _BatchDone:
    """What a worker did with one batch (small: this crosses the process boundary)."""

    end: int  # blocks [0, end) of this batch's range are on the target
    written: int
    zeroed: int
    damage: _Damage | None = None


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


def _fetch_all(src: ChunkSource, host: str, wanted: list[bytes], opts: StreamOptions
               ) -> dict[bytes, bytes]:
    blobs: dict[bytes, bytes] = {}
    for start in range(0, len(wanted), MAX_IDS_PER_REQUEST):
        part = wanted[start:start + MAX_IDS_PER_REQUEST]
        try:
            blobs.update(_fetch(src, host, part, opts))
        except (IntegrityError, NotFoundError, FormatError):
            # One bad or missing object fails the whole request: fetch one by one so the
            # damaged block (and only it) is named.
            for cid in part:
                try:
                    blobs.update(_fetch(src, host, [cid], opts))
                except (IntegrityError, NotFoundError, FormatError):
                    continue
    return blobs


class _Writer:
    """Coalesces neighbouring verified blocks into one pwrite, zero runs into one call."""

    def __init__(self, target: Target, base: int, block_size: int) -> None:
        self.target, self.base, self.block_size = target, base, block_size
        self.run: list[bytes] = []
        self.run_start = self.zero_start = self.zero_len = 0
        self.written = self.zeroed = 0

    def data(self, index: int, data: bytes) -> None:
        if self.zero_len:
            self.flush()
        if not self.run:
            self.run_start = index
        self.run.append(data)

    def zero(self, index: int, length: int) -> None:
        if self.run:
            self.flush()
        if not self.zero_len:
            self.zero_start = index
        self.zero_len += length

    def flush(self) -> None:
        try:
            if self.run:
                self.written += self.target.write_run(
                    self.base + self.run_start * self.block_size, self.run)
                self.run = []
            if self.zero_len:
                self.target.zero(self.base + self.zero_start * self.block_size, self.zero_len)
                self.zeroed += self.zero_len
                self.zero_len = 0
        except OSError as exc:
            raise TargetError(f"{self.target.path}: writing the restore failed: "
                              f"{exc.strerror or exc}") from None


@dataclass
class _Worker:
    src: ChunkSource
    host: str
    codec: BlobCodec
    vol: VolumeRecord
    target: Target
    base: int
    opts: StreamOptions

    def run(self, batch: Batch) -> _BatchDone:
        geo, vol = self.vol.geometry, self.vol
        blobs = _fetch_all(self.src, self.host,
                           sorted({cid for _, cid in batch if cid != fmt.ZERO_ID}), self.opts)
        out = _Writer(self.target, self.base, vol.block_size)
        plain: dict[bytes, bytes] = {}
        for index, cid in batch:
            length = geo.block_length(index)
            if cid == fmt.ZERO_ID:
                out.zero(index, length)
                continue
            why = None
            if cid not in plain:
                blob = blobs.get(cid)
                if blob is None:
                    why = "is missing or damaged on the server"
                else:
                    try:
                        plain[cid] = self.codec.open_block(cid, blob)
                    except (IntegrityError, FormatError) as exc:
                        why = f"failed verification: {exc}"
            if why is None and len(plain[cid]) != length:
                why = f"holds {len(plain[cid])} bytes where the volume has {length}"
            if why is not None:
                out.flush()
                return _BatchDone(index, out.written, out.zeroed,
                                  _Damage(index * vol.block_size, length, cid, why))
            out.data(index, plain[cid])
        out.flush()
        return _BatchDone(batch[-1][0] + 1, out.written, out.zeroed)


_worker: _Worker | None = None


def _init_worker(parent: int, src: ChunkSource, host: str, codec: BlobCodec,
                 vol: VolumeRecord, target: Target, base: int, opts: StreamOptions) -> None:
    """Runs in each forked worker: the arguments are inherited, never pickled (a codec
    holds key objects). The parent's open connections are dropped, not shared."""
    global _worker
    # A killed restore must not leave workers behind that still write to the target.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    close = getattr(src, "close", None)
    if callable(close):
        close()
    # Its own descriptor and direct I/O buffer, the parent's target's properties.
    own = Target(target.path, direct_buffer=opts.batch_bytes, reads_zero=target.reads_zero)
    _worker = _Worker(src, host, codec, vol, own, base, opts)


def _run_batch(batch: Batch) -> _BatchDone:
    assert _worker is not None
    return _worker.run(batch)


def _batches(ids: Iterator[tuple[int, bytes]], size: int) -> Iterator[Batch]:
    while batch := list(islice(ids, size)):
        yield batch


def stream_volume(src: ChunkSource, host: str, codec: BlobCodec, vol: VolumeRecord,
                  target: Target, base: int, *, start_block: int = 0,
                  options: StreamOptions | None = None,
                  on_progress: Callable[[int], None] | None = None,
                  on_checkpoint: Callable[[int], None] | None = None,
                  result: StreamResult | None = None) -> StreamResult:
    """Restore `vol` to `target` at byte `base`, from block `start_block` on. Calls
    `on_progress(bytes)` as blocks land and `on_checkpoint(blocks)` after each sync with
    the number of leading blocks that are safely on the target. The counts go to
    `result` (a new one by default) as blocks land, so a caller that passes its own
    still has them when this raises."""
    opts = options or StreamOptions()
    result = result if result is not None else StreamResult()
    result.resumed = min(start_block * vol.block_size, vol.size)
    index_damage: list[_Damage] = []

    def block_ids() -> Iterator[tuple[int, bytes]]:
        # An index page missing or damaged on the server leaves the blocks from here on
        # unknown: like a damaged chunk it stops this volume only, after the blocks
        # before it (all handed out already) are restored. An answer that is not a
        # record stream (FormatError) is the server failing, not the page: it stops all.
        # A resume reads the index from its checkpoint on: the pages that cover only
        # blocks before it (written and synced by an earlier run) are never fetched, so
        # one lost on the server since cannot stop the volume.
        at = start_block
        try:
            for item in iter_block_ids(vol.geometry, src.page_source(host), vol.root_id,
                                       start=start_block):
                at = item[0] + 1
                yield item
        except (IntegrityError, NotFoundError) as exc:
            offset = at * vol.block_size
            index_damage.append(_Damage(offset, vol.size - offset, b"", "are not restored: "
                                        f"their index is missing or damaged on the server "
                                        f"({exc})"))

    ids = block_ids()
    per_batch = max(1, min(opts.batch_bytes // vol.block_size, MAX_IDS_PER_REQUEST))
    done_blocks, unsynced = start_block, 0
    damage: _Damage | None = None
    sync_failed = False

    def checkpoint(blocks: int) -> None:
        nonlocal sync_failed
        if sync_failed:
            # Linux reports a writeback error to a descriptor once: a later fsync may
            # succeed with the lost writes still lost, so nothing more is claimed.
            return
        try:
            target.sync()  # flushes the workers' writes too: they share the page cache
        except OSError as exc:
            sync_failed = True
            raise TargetError(f"{target.path}: flushing the restored data to the disk "
                              f"failed: {exc.strerror or exc}; nothing written since the "
                              "last checkpoint counts as restored") from None
        if on_checkpoint:
            on_checkpoint(blocks)

    # Checkpoints run on their own thread: while the disk flushes, the workers go on
    # fetching and decrypting instead of stalling behind the fsync. One at a time; a
    # checkpoint due while another runs waits for the next batch.
    syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-sync")
    syncing: Future[None] | None = None

    # fork: the workers inherit the codec and client instead of receiving pickles.
    pool = fork_pool(max(1, opts.workers), _init_worker,
                     (os.getpid(), src, host, codec, vol, target, base, opts))
    pending: deque[Future[_BatchDone]] = deque()
    batches = _batches(ids, per_batch)
    failing = False
    try:
        while damage is None:
            while len(pending) < 2 * max(1, opts.workers):
                batch = next(batches, None)
                if batch is None:
                    break
                pending.append(pool.submit(_run_batch, batch))
            if not pending:
                break
            done = pending.popleft().result()
            if syncing is not None and syncing.done():
                syncing.result()  # a failed flush stops the restore now, before more counts
            result.written += done.written
            result.zeroed += done.zeroed
            done_blocks, damage = done.end, done.damage
            unsynced += done.written + done.zeroed
            if on_progress:
                on_progress(done.written + done.zeroed)
            if unsynced >= opts.checkpoint_bytes and (syncing is None or syncing.done()):
                if syncing is not None:
                    syncing.result()  # one that failed since the check above stops it here
                syncing = syncer.submit(checkpoint, done_blocks)
                unsynced = 0
    except BaseException:
        failing = True
        raise
    finally:
        for fut in pending:
            fut.cancel()
        # Batches already running finish (they write only verified blocks) before the
        # checkpoint: the state never claims more than the contiguous prefix seen.
        pool.shutdown(wait=True, cancel_futures=True)
        syncer.shutdown(wait=True)
        # With an error on its way out, a failing flush must not replace it.
        with contextlib.suppress(TargetError) if failing else contextlib.nullcontext():
            checkpoint(done_blocks)
            if syncing is not None:
                syncing.result()
    damage = damage or (index_damage[0] if index_damage else None)
    if damage is not None:
        raise BlockDamaged(vol.name, damage.offset, damage.length, damage.chunk, damage.why)
    return result
