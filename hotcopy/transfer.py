"""Talking to the server safely: retries after dropped connections (asking again what the
server lacks, so nothing stored is sent twice), a bandwidth cap, and batched upload of
chunks (by the sealing workers, hotcopy.sealpool) and index pages."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TypeVar

from cdpcore.api import MAX_IDS_PER_REQUEST, MAX_UPLOAD_BYTES, ObjectKind
from cdpcore.errors import ConnectionFailed, ServerError

from .remote import Remote

log = logging.getLogger("cdp.agent.transfer")
T = TypeVar("T")

#: Bytes of chunks (in each sealing worker) or index pages gathered per upload request.
BATCH_BYTES = 8 * 1024 * 1024
UPLOAD_BYTES = min(MAX_UPLOAD_BYTES, 16 * 1024 * 1024)


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
    """Caps the average upload rate (bytes/s) of everything sharing it: threads, and the
    sealing workers forked after it was made (the count lives in shared memory). 0 means
    no cap."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._start = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
        self._sent = multiprocessing.RawValue("q", 0)
        self._lock = multiprocessing.Lock()

    def take(self, nbytes: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            self._sent.value += nbytes
            due = self._start + self._sent.value / self.rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)


def send_new_chunks(sender: Sender, chunks: Mapping[bytes, bytes],
                    damaged: Collection[bytes]) -> None:
    """Upload the chunks the server lacks, and every damaged one (which heals it)."""
    lacking = sender.missing(ObjectKind.chunks, [c for c in chunks if c not in damaged])
    sender.send(ObjectKind.chunks, [(c, blob) for c, blob in chunks.items()
                                    if c in lacking or c in damaged])


@dataclass
class UploadStats:
    new_chunks: int = 0
    new_bytes: int = 0
    new_pages: int = 0

    def add(self, other: UploadStats) -> None:
        self.new_chunks += other.new_chunks
        self.new_bytes += other.new_bytes
        self.new_pages += other.new_pages


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

