"""The local object store's pack files: written in parts with direct I/O, read back by
ranges (neighbours in one transfer), byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

from cdp_server import store
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
