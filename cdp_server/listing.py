"""Full point listings kept ready: after a change through this server (a commit, a pin),
the listing of a host that was listed recently is rendered and gzipped again in the
background, so the next GET finds it ready instead of paying for 100,000 rows.

Correctness never depends on the refresh: the catalog recognises a stale listing by the
host's generation (bumped in the same transaction as any change, by any process) and
renders again when needed; the refresh only moves that work off the next request."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from . import compress
from .catalog import Catalog

log = logging.getLogger("cdp.server")


class Listings:
    def __init__(self, catalog: Catalog, entries: int) -> None:
        self._catalog = catalog
        self._entries = entries
        self._gzip = compress.GzipCache(entries)
        # One worker: refreshes are background work and must not crowd out requests.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cdp-listing")
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._pending: dict[str, Future[None]] = {}

    def full(self, host: str, *, gzip: bool) -> tuple[bytes, bool]:
        """The whole listing of `host` as JSON, and whether it is gzipped: if `gzip`
        allows it and it is large enough to gain."""
        with self._lock:
            self._recent[host] = None
            self._recent.move_to_end(host)
            while len(self._recent) > self._entries:
                self._recent.popitem(last=False)
            pending = self._pending.get(host)
        if pending is not None:
            pending.result()  # a refresh is rendering this listing: wait, do not repeat it
        body = self._catalog.points_json(host, None, None, None)
        if gzip and len(body) >= compress.MIN_BYTES:
            return self._gzip.get(host, body), True
        return body, False

    def changed(self, host: str) -> None:
        """Points of `host` changed: render its listing again now if it is listed often."""
        with self._lock:
            if host not in self._recent or host in self._pending:
                return
            self._pending[host] = self._pool.submit(self._refresh, host)

    def _refresh(self, host: str) -> None:
        try:
            self._gzip.get(host, self._catalog.points_json(host, None, None, None))
        except Exception:
            # The next request renders it itself and reports any error to its client.
            log.warning("listing refresh failed", extra={"host": host}, exc_info=True)
        finally:
            with self._lock:
                self._pending.pop(host, None)
