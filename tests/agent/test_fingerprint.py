"""Scan fingerprints: an unchanged block keeps its ID without the HMAC being computed, and
every changed block is hashed and sealed (hotcopy.sealpool.seal_segment, in process)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdpcore import format as fmt
from cdpcore.crypto import BlobCodec, KeySet
from hotcopy import fingerprint, sealpool
from hotcopy.fingerprint import Fingerprinter
from hotcopy.sealpool import Segment, seal_segment

BS = 16 * 1024


class CountingKeys(KeySet):
    calls = 0

    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        CountingKeys.calls += 1
        return super().chunk_id(plaintext)


@pytest.fixture
def worker() -> Iterator[BlobCodec]:
    master = os.urandom(fmt.MASTER_KEY_SIZE)
    keys = CountingKeys(enc_key=master[:32], id_key=master[32:])
    codec = BlobCodec(keys)
    sealpool._worker = sealpool._Worker(codec, frozenset(), Fingerprinter(keys.id_key))
    CountingKeys.calls = 0
    yield codec
    sealpool._worker.close()
    sealpool._worker = None


def segment(path: Path, blocks: int, olds: bytes = b"", old_fps: bytes = b"") -> Segment:
    return Segment(str(path), 0, ((0, blocks),), blocks * BS, BS, olds, old_fps)


def test_unchanged_blocks_are_not_hashed_and_changed_ones_are(worker: BlobCodec,
                                                              tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    data = bytearray(os.urandom(8 * BS))
    data[3 * BS:4 * BS] = bytes(BS)  # an all-zero block
    disk.write_bytes(data)
    first = seal_segment(segment(disk, 8))
    assert CountingKeys.calls == 7 and first.ids[3] == fmt.ZERO_ID
    assert first.fps[3 * 16:4 * 16] == fingerprint.UNKNOWN
    assert sorted(first.blobs) == [0, 1, 2, 4, 5, 6, 7]

    CountingKeys.calls = 0
    again = seal_segment(segment(disk, 8, b"".join(first.ids), first.fps))
    assert CountingKeys.calls == 0
    assert (again.ids, again.fps, again.blobs) == (first.ids, first.fps, {})

    data[5 * BS + 100] ^= 1
    disk.write_bytes(data)
    CountingKeys.calls = 0
    changed = seal_segment(segment(disk, 8, b"".join(first.ids), first.fps))
    assert CountingKeys.calls == 1
    assert [j for j in range(8) if changed.ids[j] != first.ids[j]] == [5]
    assert changed.ids[5] == worker.keys.chunk_id(bytes(data[5 * BS:6 * BS]))
    assert list(changed.blobs) == [5]
    assert worker.open_block(changed.ids[5], changed.blobs[5]) == data[5 * BS:6 * BS]


def test_a_matching_fingerprint_never_revives_a_zero_id(worker: BlobCodec,
                                                        tmp_path: Path) -> None:
    """A block last recorded as a hole (ID ZERO_ID) whose stale fingerprint matches its
    new content is hashed: the guard that keeps a hole's leftover fingerprint harmless."""
    disk = tmp_path / "disk.img"
    block = os.urandom(BS)
    disk.write_bytes(block)
    stale = Fingerprinter(worker.keys.id_key)(block)  # the worker's own key
    out = seal_segment(segment(disk, 1, fmt.ZERO_ID, stale))
    assert CountingKeys.calls == 1
    assert out.ids == [worker.keys.chunk_id(block)] and list(out.blobs) == [0]


def test_fingerprints_depend_on_the_key() -> None:
    block = os.urandom(BS)
    one, two = Fingerprinter(os.urandom(32)), Fingerprinter(os.urandom(32))
    assert one(block) == one(bytes(block)) and len(one(block)) == 16
    assert one(block) != two(block)
