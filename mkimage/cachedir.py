"""Bounded build caches. Each kind of entry in the image cache (`base-KEY`, the drill's
`drill-KEY`) changes key with the code that builds it, so without a bound every change
would leave its old entry behind (a drill disk holds about 500 MB). A build marks the
entry it uses and keeps, per kind, that one and the most recently used other (the code
before it, for an A/B run); temporary directories of builds killed long ago go too."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

#: Entries of a kind kept: the one in use and the most recently used other.
KEEP = 2
#: Age after which a build's temporary directory is taken for a killed build's: far
#: longer than a build may take (mmdebstrap and pip are bounded by 90 minutes).
STALE_SECONDS = 24 * 3600


def use(entry: Path) -> None:
    """Mark a cache entry as just used (its modification time orders the eviction)."""
    os.utime(entry)


def evict(cache: Path, kind: str, current: Path, keep: int = KEEP) -> list[Path]:
    """Remove the entries `KIND-<16 hex digits>` of cache but `current` and the keep - 1
    most recently used others; returns what went."""
    pattern = re.compile(re.escape(kind) + r"-[0-9a-f]{16}")
    others = sorted((p for p in cache.iterdir()
                     if p.is_dir() and pattern.fullmatch(p.name) and p != current),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    gone = others[max(keep - 1, 0):]
    for entry in gone:
        shutil.rmtree(entry, ignore_errors=True)
    return gone


def forget_stale(cache: Path, prefix: str, now: float | None = None) -> list[Path]:
    """Remove temporary build directories `PREFIX*` older than STALE_SECONDS."""
    limit = (time.time() if now is None else now) - STALE_SECONDS
    gone = [p for p in cache.glob(prefix + "*") if p.is_dir() and p.stat().st_mtime < limit]
    for entry in gone:
        shutil.rmtree(entry, ignore_errors=True)
    return gone
