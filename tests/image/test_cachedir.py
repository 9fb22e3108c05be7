"""The image cache's bound: per kind, the entry in use and the most recently used other
stay; older ones, and temporary directories of builds killed long ago, go."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mkimage import cachedir


def _entry(cache: Path, name: str, age: float) -> Path:
    path = cache / name
    path.mkdir()
    (path / "data").write_bytes(b"x")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_eviction_keeps_the_current_and_the_most_recently_used_other(tmp_path: Path) -> None:
    cache = tmp_path
    old = _entry(cache, "drill-" + "1" * 16, 300)
    recent = _entry(cache, "drill-" + "2" * 16, 100)
    oldest = _entry(cache, "drill-" + "3" * 16, 900)
    current = _entry(cache, "drill-" + "4" * 16, 600)  # used long ago, in use now
    base = _entry(cache, "base-" + "5" * 16, 9000)  # another kind
    apt = _entry(cache, "apt", 9000)
    building = _entry(cache, ".drill-abc123", 50)  # a build running now
    cachedir.use(current)
    assert sorted(cachedir.evict(cache, "drill", current)) == [old, oldest]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        p.name for p in (recent, current, base, apt, building))
    assert cachedir.evict(cache, "drill", current) == []


def test_only_long_dead_build_directories_are_forgotten(tmp_path: Path) -> None:
    dead = _entry(tmp_path, "base-build-k1ll3d", cachedir.STALE_SECONDS + 60)
    running = _entry(tmp_path, "base-build-running", 600)
    finished = _entry(tmp_path, "base-" + "a" * 16, cachedir.STALE_SECONDS + 60)
    assert cachedir.forget_stale(tmp_path, "base-build-") == [dead]
    assert running.is_dir() and finished.is_dir()
