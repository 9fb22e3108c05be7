"""gzip for large JSON answers (point listings). A listing of 100,000 points is about
28 MiB of very repetitive JSON and about 1 MiB gzipped: sending it costs far more than
compressing it. requests (cdpcore.client) asks for gzip and inflates transparently, so the
wire format of the body itself does not change."""

from __future__ import annotations

import gzip
import re
import threading

#: Smaller answers go as they are: a packet or two, not worth a compressor's start-up.
MIN_BYTES = 8 * 1024
#: Level 1: about 28x smaller on listings at several times the speed of the default 6.
LEVEL = 1


def accepts_gzip(accept_encoding: str) -> bool:
    """True if an Accept-Encoding header allows gzip (RFC 9110 12.5.3). gzip's own item
    decides wherever it stands (`x-gzip` is the same coding); `*` only for a header that
    does not name gzip; a weight of 0 means "not acceptable". An empty header allows no
    coding, and so does an absent one here: clients that do not ask cannot be assumed to
    inflate."""
    named: float | None = None
    star: float | None = None
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            # Named twice with different weights: the lower, so that a refusal stands.
            named = min(_weight(params), 1.0 if named is None else named)
        elif coding == "*":
            star = min(_weight(params), 1.0 if star is None else star)
    weight = named if named is not None else star
    return weight is not None and weight > 0


#: RFC 9110 12.4.2: 0 to 1 with at most three decimals.
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def _weight(params: list[str]) -> float:
    """An item's weight: 1 without `q`; 0 for one that is no qvalue (`nan`, `2`, `1e3`):
    answering uncompressed is always safe, gzip to a client that refused it is not."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            return float(value) if _QVALUE.fullmatch(value) else 0.0
    return 1.0


def pack(body: bytes) -> bytes:
    return gzip.compress(body, LEVEL, mtime=0)


class GzipCache:
    """Compressed copies of the last listing body of a few keys (hosts). A body is
    recognised by identity: the catalog hands out the same bytes object until the host's
    points change, and holding it here keeps its id from being reused."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._cache: dict[str, tuple[bytes, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, body: bytes) -> bytes:
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] is body:
            return hit[1]
        packed = pack(body)
        with self._lock:
            if len(self._cache) >= self._entries and key not in self._cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (body, packed)
        return packed
