"""The local object store's pack files: written in parts with direct I/O, read back by
ranges (neighbours in one transfer), byte for byte."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cdp_server import store
from cdp_server.errors import StorageFull
from cdp_server.store import LocalStore


def test_a_pack_reads_back_by_ranges_near_far_large_and_past_its_end(tmp_path: Path) -> None:
    objects = LocalStore(tmp_path)
    # Unaligned sizes (the tail is written buffered), and more than one buffer in all.
    parts = [os.urandom(n) for n in (16_413, 1, 4096, 3_000_000, 2_500_001, 777)]
    objects.put("packs/ab/one.pack", parts)
    data = b"".join(parts)
    assert (tmp_path / "packs/ab/one.pack").read_bytes() == data
    big = store._BUFFERS.size  # one range larger than a buffer
    ranges = [(0, 16_413), (16_413, 1), (16_500, 10), (200_000, 5),  # neighbours, a far one
              (100, big), (len(data) - 5, 5), (len(data) - 3, 10), (len(data) + 10, 4)]
    assert objects.get_ranges("packs/ab/one.pack", ranges) == [
        data[offset:offset + length] for offset, length in ranges]


def test_uploads_leave_the_catalog_its_reserve_on_a_full_filesystem(
        small_fs: Callable[[int], Path]) -> None:
    """Packs are refused while the catalog still has room: on a full datastore, prune, gc
    and verify must still be able to write to it."""
    assert store.catalog_reserve(8 << 20) == 1 << 20  # the floor
    assert store.catalog_reserve(10 << 30) == (10 << 30) // 100
    assert store.catalog_reserve(1 << 40) == 256 << 20  # the cap
    mnt = small_fs(8)
    objects = LocalStore(mnt)
    stored = []
    with pytest.raises(StorageFull, match=r"the datastore is full: 1 MiB free, 1 MiB "
                                          r"of it kept for the catalog"):
        for n in range(8):
            objects.put(f"packs/00/{n}.pack", [os.urandom(1 << 20)])
            stored.append(n)
    # 7 of 8 MiB written; the eighth would eat into the reserve.
    assert stored == list(range(7)) and not (mnt / "packs/00/7.pack").exists()
    fs = os.statvfs(mnt)
    assert fs.f_bavail * fs.f_frsize >= 1 << 20
    assert not list((mnt / "tmp").iterdir())
