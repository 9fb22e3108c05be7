"""Sealing a segment (hotcopy.sealpool.seal_segment, in process): every block is named by
its keyed ID, and only blocks whose ID differs from the last point's are sealed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdpcore import format as fmt
from cdpcore.crypto import BlobCodec, KeySet
from hotcopy import sealpool
from hotcopy.sealpool import Segment, seal_segment

BS = 16 * 1024


@pytest.fixture
def worker() -> Iterator[BlobCodec]:
    codec = BlobCodec(KeySet.from_master(os.urandom(fmt.MASTER_KEY_SIZE)))
    sealpool._worker = sealpool._Worker(codec, frozenset())
    yield codec
    sealpool._worker.close()
    sealpool._worker = None


def segment(path: Path, blocks: int, olds: bytes = b"") -> Segment:
    return Segment(str(path), 0, ((0, blocks),), blocks * BS, BS, olds)


def test_only_blocks_whose_id_changed_are_sealed(worker: BlobCodec, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    data = bytearray(os.urandom(8 * BS))
    data[3 * BS:4 * BS] = bytes(BS)  # an all-zero block
    disk.write_bytes(data)
    first = seal_segment(segment(disk, 8))
    assert first.ids == [fmt.ZERO_ID if b == 3 else worker.keys.chunk_id(data[b * BS:(b + 1) * BS])
                         for b in range(8)]
    assert sorted(first.blobs) == [0, 1, 2, 4, 5, 6, 7]

    again = seal_segment(segment(disk, 8, b"".join(first.ids)))
    assert (again.ids, again.blobs) == (first.ids, {})

    data[5 * BS + 100] ^= 1
    disk.write_bytes(data)
    changed = seal_segment(segment(disk, 8, b"".join(first.ids)))
    assert [j for j in range(8) if changed.ids[j] != first.ids[j]] == [5]
    assert list(changed.blobs) == [5]
    assert worker.open_block(changed.ids[5], changed.blobs[5]) == data[5 * BS:6 * BS]


def test_a_block_that_was_a_hole_is_sealed(worker: BlobCodec, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    block = os.urandom(BS)
    disk.write_bytes(block)
    out = seal_segment(segment(disk, 1, fmt.ZERO_ID))
    assert out.ids == [worker.keys.chunk_id(block)] and list(out.blobs) == [0]
    assert worker.open_block(out.ids[0], out.blobs[0]) == block


def test_a_damaged_chunk_is_sealed_again_though_unchanged(tmp_path: Path) -> None:
    """The server reported the chunk damaged: the block is resent although its ID is the
    last point's, so the next point heals it."""
    codec = BlobCodec(KeySet.from_master(os.urandom(fmt.MASTER_KEY_SIZE)))
    disk = tmp_path / "disk.img"
    block = os.urandom(BS)
    disk.write_bytes(block)
    cid = codec.keys.chunk_id(block)
    sealpool._worker = sealpool._Worker(codec, frozenset({cid}))
    try:
        out = seal_segment(segment(disk, 1, cid))
    finally:
        sealpool._worker.close()
        sealpool._worker = None
    assert out.ids == [cid] and list(out.blobs) == [0]
