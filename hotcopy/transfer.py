"""Talking to the server safely: retries after dropped connections (asking again what the
server lacks, so nothing stored is sent twice), a bandwidth cap, and batched upload of
chunks (by the sealing workers, hotcopy.sealpool) and index pages. Whether a batch of
chunks is preceded by a "missing" query is decided by what the server's last answers
showed (`Asking`)."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TypeVar

from cdpcore import records
from cdpcore.api import MAX_IDS_PER_REQUEST, MAX_UPLOAD_BYTES, ObjectKind, UploadResult
from cdpcore.errors import ConnectionFailed, ServerError

from .remote import Remote

log = logging.getLogger("cdp.agent.transfer")
T = TypeVar("T")

#: Bytes of chunks (in each sealing worker) or index pages gathered per upload request.
BATCH_BYTES = 8 * 1024 * 1024
UPLOAD_BYTES = min(MAX_UPLOAD_BYTES, 16 * 1024 * 1024)
#: Ask the server which chunks it lacks before uploading a batch while more than this share
#: of the last batch's bytes turned out to be stored already (half a MiB of an 8 MiB batch).
ASK_ABOVE = 1 / 16


@dataclass
class RetryPolicy:
    attempts: int = 8
    first_delay: float = 1.0
    max_delay: float = 60.0


def _transient(exc: Exception) -> bool:
    return isinstance(exc, ConnectionFailed) or (
        isinstance(exc, ServerError) and exc.status is not None and exc.status >= 500)


#: Set by `request_stop` (the SIGTERM handler of `cdp-agent run` and `backup`, and a Ctrl-C
#: during a point): the seconds a request under way may still take, -1 while no stop is
#: requested.
#: Shared memory made at import, before any worker is forked, so that the sealing workers,
#: which make requests of their own, see it too: `kill PID` signals the agent alone
#: (systemd signals them as well), and a plain global set in the agent stayed as it was in
#: each worker.
_stop_requested = multiprocessing.RawValue("d", -1.0)


def request_stop(grace: float = 0.0) -> None:
    """The agent is being stopped: no more waiting for a server that does not answer, nor
    for the bandwidth cap, and no request is tried again. A request under way has `grace`
    seconds to be answered, then is cut (StopRequested, through the client's `stop_grace`
    hook, which is `stop_grace`): SIGTERM gives the configured `stop_grace`, so that a point
    the server is finishing still commits, well before systemd's SIGKILL (TimeoutStopSec);
    Ctrl-C gives none. A second request only shortens the grace. A failure after the stop
    fails the point. Safe in a signal handler; reaches the forked workers too."""
    now = _stop_requested.value
    _stop_requested.value = grace if now < 0 else min(now, grace)


def stopping() -> bool:
    """Whether this process, or the agent that forked it, was asked to stop."""
    grace: float = _stop_requested.value
    return grace >= 0


def stop_grace() -> float | None:
    """Seconds a request under way may still take, None while no stop is requested."""
    grace: float = _stop_requested.value
    return None if grace < 0 else grace


def wait(seconds: float) -> bool:
    """Sleep `seconds`, a second at a time so that a stop requested meanwhile ends the wait
    within a second; False if it did."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        if stopping():
            return False
        time.sleep(min(1.0, left))
    return not stopping()


def retrying(policy: RetryPolicy, what: str, fn: Callable[[], T]) -> T:
    delay = policy.first_delay
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not _transient(exc) or attempt == policy.attempts or stopping():
                raise
            log.warning("%s failed (%s); retry %d/%d in %.0f s", what, exc, attempt,
                        policy.attempts - 1, delay)
            if not wait(delay):
                raise
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
        # Once a stop is requested the cap holds the point back no longer: at a few bytes
        # per second one sleep outlasted systemd's TimeoutStopSec, and its SIGKILL left the
        # point's snapshots behind. The point then ends as it would without a cap.
        wait(due - time.monotonic())


@dataclass
class Asking:
    """Whether to ask the server which chunks it lacks before uploading a batch. The question
    costs a round trip and a lookup of every ID on the server, and when nearly all of a
    batch is new (a first backup, the changed blocks of an incremental) its answer is
    "all of them": skipping it took the full backup of the benchmark's 2 GiB image from
    6.30 to 5.88 s. Not asking costs the bytes of chunks the server already has, which its
    answer to the upload reports. So ask while the last batch showed more than ASK_ABOVE of
    its bytes already stored (learnt from the question's answer, or from the upload's), and
    always against a server that does not report stored bytes."""

    #: Of the last batch's bytes, the share the server already held; 1.0 asks first.
    present_share: float = 1.0
    #: False once a server answered an upload without `stored_bytes` (an older server).
    measurable: bool = True

    def wanted(self) -> bool:
        return not self.measurable or self.present_share > ASK_ABOVE

    def saw(self, present_bytes: int, total_bytes: int) -> None:
        if total_bytes:
            self.present_share = present_bytes / total_bytes

    def join(self, other: Asking) -> None:
        """Take in what another uploader learnt: ask if either would."""
        self.present_share = max(self.present_share, other.present_share)
        self.measurable = self.measurable and other.measurable


def send_new_chunks(sender: Sender, chunks: Mapping[bytes, bytes],
                    damaged: Collection[bytes], asking: Asking) -> None:
    """Upload the chunks the server lacks (asking first or not, as `asking` decides, and
    telling it what the server's answers showed), and every damaged one (which heals it)."""
    if not asking.wanted():
        sent, stored = sender.send(ObjectKind.chunks, list(chunks.items()))
        if stored is None:
            asking.measurable = False
        else:
            asking.saw(sent - stored, sent)
        return
    candidates = [c for c in chunks if c not in damaged]
    lacking = sender.missing(ObjectKind.chunks, candidates)
    asking.saw(sum(len(chunks[c]) for c in candidates if c not in lacking),
               sum(len(chunks[c]) for c in candidates))
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

    def send(self, kind: ObjectKind, items: list[tuple[bytes, bytes]]
             ) -> tuple[int, int | None]:
        """Upload `items` (wanted, or sent without asking). Returns the bytes sent and the
        bytes the server stored of them (None if a server did not say)."""
        sent, stored = 0, 0
        known = True  # every answer said what it stored
        for batch in records.split_records(items, UPLOAD_BYTES, MAX_IDS_PER_REQUEST):
            new = self._send_batch(kind, batch)
            sent += sum(len(b) for _, b in batch)
            known = known and new is not None
            stored += new or 0
        return sent, stored if known else None

    def _send_batch(self, kind: ObjectKind, batch: list[tuple[bytes, bytes]]) -> int | None:
        """Upload one request, resuming after dropped connections. Counts as new what the
        last attempt did not find stored already (chunks found stored after a failed
        attempt count as new); returns the bytes the server stored, as `send`."""
        pending = batch
        result: UploadResult | None = None
        delay = self.policy.first_delay
        for attempt in range(1, self.policy.attempts + 1):
            self.throttle.take(sum(len(b) for _, b in pending))
            try:
                result = self.remote.upload(self.host, kind, pending)
                break
            except Exception as exc:
                if not _transient(exc) or attempt == self.policy.attempts or stopping():
                    raise
                log.warning("upload of %d %s failed (%s); resuming in %.0f s", len(pending),
                            kind, exc, delay)
                if not wait(delay):
                    raise
                delay = min(delay * 2, self.policy.max_delay)
                # Part of the request may have been stored: send only what is still lacking.
                lacking = self.missing(kind, [oid for oid, _ in pending])
                pending = [(oid, blob) for oid, blob in pending if oid in lacking]
                if not pending:
                    break
        stored_bytes = sum(len(b) for _, b in batch)
        duplicates = 0
        if result is not None:  # else a failed attempt had stored all that was pending
            duplicates = result.duplicates
            if result.stored_bytes is not None:
                stored_bytes -= sum(len(b) for _, b in pending) - result.stored_bytes
        with self._lock:
            if kind is ObjectKind.chunks:
                self.stats.new_chunks += len(batch) - duplicates
                self.stats.new_bytes += stored_bytes
            else:
                self.stats.new_pages += len(batch) - duplicates
        return None if result is not None and result.stored_bytes is None else stored_bytes


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

