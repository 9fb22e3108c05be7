"""Talking to the server safely: retries after dropped connections (asking again what the
server lacks, so nothing stored is sent twice), a bandwidth cap, and batched upload of
chunks and index pages with a bounded background queue."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cdpcore.api import MAX_IDS_PER_REQUEST, MAX_UPLOAD_BYTES, ObjectKind
from cdpcore.errors import ConnectionFailed, ServerError

from .remote import Remote

log = logging.getLogger("cdp.agent.transfer")
T = TypeVar("T")

#: Raw bytes per batch of candidate blocks: bounds memory (a few batches in flight) while
#: keeping requests large enough to amortise round trips.
BATCH_BYTES = 8 * 1024 * 1024
UPLOAD_BYTES = min(MAX_UPLOAD_BYTES, 16 * 1024 * 1024)
#: Upload threads (each holds one batch of BATCH_BYTES raw plus its sealed blobs).
UPLOADERS = 2


@dataclass
class RetryPolicy:
    attempts: int = 8
    first_delay: float = 1.0
    max_delay: float = 60.0


def _transient(exc: Exception) -> bool:
    return isinstance(exc, ConnectionFailed) or (
        isinstance(exc, ServerError) and exc.status is not None and exc.status >= 500)


def retrying(policy: RetryPolicy, what: str, fn: Callable[[], T]) -> T:
    delay = policy.first_delay
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not _transient(exc) or attempt == policy.attempts:
                raise
            log.warning("%s failed (%s); retry %d/%d in %.0f s", what, exc, attempt,
                        policy.attempts - 1, delay)
            time.sleep(delay)
            delay = min(delay * 2, policy.max_delay)
    raise AssertionError("unreachable")


class Throttle:
    """Caps the average upload rate (bytes/s); 0 means no cap."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._start = time.monotonic()
        self._sent = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            self._sent += nbytes
            due = self._start + self._sent / self.rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)


@dataclass
class UploadStats:
    new_chunks: int = 0
    new_bytes: int = 0
    new_pages: int = 0


class Sender:
    """Uploads objects of one kind: asks which IDs the server lacks, then sends those in
    requests of at most UPLOAD_BYTES. A dropped connection is retried, re-asking what is
    missing first, so a resumed upload does not resend what already arrived."""

    def __init__(self, remote: Remote, host: str, policy: RetryPolicy, throttle: Throttle,
                 stats: UploadStats) -> None:
        self.remote, self.host, self.policy = remote, host, policy
        self.throttle, self.stats = throttle, stats
        self._lock = threading.Lock()  # uploader threads share the stats

    def missing(self, kind: ObjectKind, ids: list[bytes]) -> set[bytes]:
        out: set[bytes] = set()
        for start in range(0, len(ids), MAX_IDS_PER_REQUEST):
            part = ids[start:start + MAX_IDS_PER_REQUEST]
            out |= retrying(self.policy, f"asking the server for missing {kind}",
                            lambda part=part: self.remote.missing(self.host, kind, part))  # type: ignore[misc]
        return out

    def send(self, kind: ObjectKind, items: list[tuple[bytes, bytes]]) -> None:
        """Upload `items` (already known to be wanted)."""
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        for oid, blob in items:
            if batch and size + len(blob) + 68 > UPLOAD_BYTES:
                self._send_batch(kind, batch)
                batch, size = [], 0
            batch.append((oid, blob))
            size += len(blob) + 68
        if batch:
            self._send_batch(kind, batch)

    def _send_batch(self, kind: ObjectKind, batch: list[tuple[bytes, bytes]]) -> None:
        pending = batch
        delay = self.policy.first_delay
        for attempt in range(1, self.policy.attempts + 1):
            self.throttle.take(sum(len(b) for _, b in pending))
            try:
                self.remote.upload(self.host, kind, pending)
                break
            except Exception as exc:
                if not _transient(exc) or attempt == self.policy.attempts:
                    raise
                log.warning("upload of %d %s failed (%s); resuming in %.0f s", len(pending),
                            kind, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.policy.max_delay)
                # Part of the request may have been stored: send only what is still lacking.
                lacking = self.missing(kind, [oid for oid, _ in pending])
                pending = [(oid, blob) for oid, blob in pending if oid in lacking]
                if not pending:
                    break
        with self._lock:
            if kind is ObjectKind.chunks:
                self.stats.new_chunks += len(batch)
                self.stats.new_bytes += sum(len(b) for _, b in batch)
            else:
                self.stats.new_pages += len(batch)


@dataclass
class Candidate:
    chunk_id: bytes
    blob: bytes  # sealed (hotcopy.sealpool)
    force: bool  # upload even if the server says it has it (healing a damaged chunk)


class ChunkUploader:
    """Background stage: batches of sealed candidate blocks -> missing query -> upload, on
    UPLOADERS threads so that one batch's round trips overlap another's. The queue holds at most UPLOADERS batches, which bounds memory and
    makes the reader wait when the network is the bottleneck."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self._queue: queue.Queue[list[Candidate] | None] = queue.Queue(maxsize=UPLOADERS)
        self._batch: list[Candidate] = []
        self._size = 0
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._run, name=f"cdp-upload-{i}", daemon=True)
                         for i in range(UPLOADERS)]
        for thread in self._threads:
            thread.start()

    def add(self, cand: Candidate) -> None:
        self._raise_error()
        self._batch.append(cand)
        self._size += len(cand.blob)
        if self._size >= BATCH_BYTES or len(self._batch) >= MAX_IDS_PER_REQUEST:
            self._put(self._batch)
            self._batch, self._size = [], 0

    def _put(self, batch: list[Candidate] | None) -> None:
        while True:
            self._raise_error()
            try:
                self._queue.put(batch, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Flush the last batch and wait until everything is uploaded (or raise)."""
        if self._batch:
            self._put(self._batch)
            self._batch = []
        for _ in self._threads:
            self._put(None)
        for thread in self._threads:
            thread.join()
        self._raise_error()

    def abort(self) -> None:
        """Stop after the batch in progress, dropping queued ones (the run has failed)."""
        self._error = self._error or RuntimeError("upload aborted")
        alive = list(self._threads)
        while alive:
            # Threads stop at the next item they take; keep offering sentinels until all
            # have (a full queue only holds batches they will drop).
            try:
                self._queue.put(None, timeout=0.1)
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
            alive = [t for t in alive if t.is_alive()]

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            while (batch := self._queue.get()) is not None:
                if self._error is not None:
                    return
                self._process(batch)
        except BaseException as exc:
            self._error = self._error or exc

    def _process(self, batch: list[Candidate]) -> None:
        unique: dict[bytes, Candidate] = {}
        for cand in batch:
            unique.setdefault(cand.chunk_id, cand)
            unique[cand.chunk_id].force |= cand.force
        lacking = self.sender.missing(ObjectKind.chunks, [c for c in unique if not unique[c].force])
        self.sender.send(ObjectKind.chunks, [(c.chunk_id, c.blob) for c in unique.values()
                                             if c.force or c.chunk_id in lacking])


class PageUploader:
    """A PageSink for cdpcore.index.build/update that uploads new pages in batches."""

    def __init__(self, sender: Sender, only: set[bytes] | None = None) -> None:
        self.sender = sender
        self.only = only  # when set: upload only these pages (answering a 409)
        self._items: dict[bytes, bytes] = {}
        self._size = 0

    def __call__(self, pid: bytes, data: bytes) -> None:
        if self.only is not None and pid not in self.only:
            return
        self._items[pid] = data
        self._size += len(data)
        if self._size >= BATCH_BYTES or len(self._items) >= MAX_IDS_PER_REQUEST:
            self.flush()

    def flush(self) -> None:
        if not self._items:
            return
        ids = list(self._items)
        lacking = set(ids) if self.only is not None else self.sender.missing(ObjectKind.pages, ids)
        self.sender.send(ObjectKind.pages, [(p, self._items[p]) for p in ids if p in lacking])
        self._items, self._size = {}, 0

