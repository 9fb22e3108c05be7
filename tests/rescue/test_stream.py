"""The streaming step on its own: target write and flush failures become a clear
TargetError, and a failed flush is never followed by a checkpoint that claims the
blocks it may have lost. Blocks come from memory here (sealed with a real key); the
server's side of a restore is tested with a real server elsewhere."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cdpcore.api import ObjectKind
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.errors import TargetError
from cdpcore.index import Geometry, MemoryPages, PageSource, build
from cdpcore.keys import new_master_key
from cdpcore.manifest import VolumeRecord
from rescue.stream import StreamOptions, stream_volume
from rescue.target import Target

BS = 16384


class MemorySource:
    def __init__(self, codec: BlobCodec, data: bytes) -> None:
        self.chunks: dict[bytes, bytes] = {}
        ids = []
        for at in range(0, len(data), BS):
            chunk_id, blob = codec.seal_block(data[at:at + BS])
            ids.append(chunk_id)
            if blob is not None:  # an all-zero block is never stored
                self.chunks[chunk_id] = blob
        self.pages = MemoryPages()
        geometry = Geometry(len(data), BS)
        self.volume = VolumeRecord("vda:p1", len(data), BS,
                                   build(geometry, ids, self.pages).hex(), geometry.height)

    def fetch(self, host: str, kind: ObjectKind, ids: list[bytes]) -> dict[bytes, bytes]:
        return {i: self.chunks[i] for i in ids}

    def page_source(self, host: str) -> PageSource:
        return self.pages


@pytest.fixture
def source() -> tuple[BlobCodec, MemorySource]:
    codec = BlobCodec(KeySet.from_master(new_master_key()))
    return codec, MemorySource(codec, os.urandom(256 * BS))  # 4 MiB, nothing zero


def _stream(codec: BlobCodec, src: MemorySource, target: Target, saved: list[int], *,
            workers: int, checkpoint_blocks: int,
            on_progress: Callable[[int], None] | None = None) -> None:
    """Restore the whole volume in batches of 4 blocks; checkpoints go to `saved`."""
    stream_volume(src, "web1", codec, src.volume, target, 0,
                  options=StreamOptions(workers=workers, batch_bytes=4 * BS,
                                        checkpoint_bytes=checkpoint_blocks * BS),
                  on_progress=on_progress, on_checkpoint=saved.append)


class WritebackFails(Target):
    """A disk whose first flush reports a writeback error, as Linux reports one: once, so
    the next fsync of the descriptor succeeds with the writes still lost. A stand-in:
    a failing disk needs device-mapper (dm-flakey), which this machine lacks."""

    def __init__(self, path: str, hold: threading.Event | None = None) -> None:
        super().__init__(path)
        self.syncs = 0
        self.failed = threading.Event()
        self.hold = hold  # the failing flush waits for it: a slow disk

    def sync(self) -> None:
        self.syncs += 1
        if self.syncs == 1:
            if self.hold is not None:
                assert self.hold.wait(10)
            self.failed.set()
            raise OSError(5, "Input/output error")
        super().sync()


def test_a_failed_flush_stops_the_restore_and_claims_nothing_after_it(
        source: tuple[BlobCodec, MemorySource], tmp_path: Path) -> None:
    codec, src = source
    path = tmp_path / "t.img"
    path.write_bytes(bytes(src.volume.size))
    saved: list[int] = []
    with WritebackFails(str(path)) as target, pytest.raises(TargetError) as err:
        _stream(codec, src, target, saved, workers=1, checkpoint_blocks=4)
    assert str(err.value) == (f"{path}: flushing the restored data to the disk failed: "
                              "Input/output error; nothing written since the last "
                              "checkpoint counts as restored")
    assert saved == []  # the first flush failed: no block is claimed, now or later
    assert target.syncs == 1


def test_progress_stops_at_a_failed_flush_not_at_the_next_checkpoint(
        source: tuple[BlobCodec, MemorySource], tmp_path: Path) -> None:
    """The flush runs beside the restore. Once it has failed, no more blocks are counted
    as landing: the progress bar stops where the restore does."""
    codec, src = source
    path = tmp_path / "t.img"
    path.write_bytes(bytes(src.volume.size))
    counted: list[int] = []
    target = WritebackFails(str(path))

    def progress(nbytes: int) -> None:
        counted.append(nbytes)
        if sum(counted) > 16 * BS:  # past the first checkpoint, whose flush fails
            assert target.failed.wait(10)
            time.sleep(0.2)  # the flush's thread hands its error to its future

    with target, pytest.raises(TargetError):
        _stream(codec, src, target, [], workers=1, checkpoint_blocks=16,
                on_progress=progress)
    # The first checkpoint is due at 16 blocks; the next one would be at 32.
    assert sum(counted) <= 20 * BS


def test_a_flush_that_fails_while_a_batch_is_counted_still_stops_the_restore(
        source: tuple[BlobCodec, MemorySource], tmp_path: Path) -> None:
    """The flush fails after the restore looked at it for this batch, with the next
    checkpoint already due: its error must not be dropped when the next flush starts."""
    codec, src = source
    path = tmp_path / "t.img"
    path.write_bytes(bytes(src.volume.size))
    release = threading.Event()
    target = WritebackFails(str(path), hold=release)
    counted: list[int] = []

    def progress(nbytes: int) -> None:
        counted.append(nbytes)
        if sum(counted) >= 36 * BS and not release.is_set():  # the next checkpoint is due
            release.set()
            assert target.failed.wait(10)
            time.sleep(0.2)  # the flush's thread hands its error to its future

    with target, pytest.raises(TargetError) as err:
        _stream(codec, src, target, [], workers=1, checkpoint_blocks=16, on_progress=progress)
    assert "flushing the restored data to the disk failed" in str(err.value)


def test_a_full_target_filesystem_is_a_clear_error(
        source: tuple[BlobCodec, MemorySource], small_fs: Callable[[int], Path]) -> None:
    codec, src = source
    path = small_fs(1) / "t.img"  # a 1 MiB filesystem for a 4 MiB volume
    path.touch()
    saved: list[int] = []
    with Target(str(path)) as target, pytest.raises(TargetError) as err:
        _stream(codec, src, target, saved, workers=2, checkpoint_blocks=16)
    assert str(err.value) == f"{path}: writing the restore failed: No space left on device"
    assert all(blocks * BS <= 1024 * 1024 for blocks in saved)


@pytest.mark.parametrize("workers", [1, 3])
def test_a_target_that_reads_zero_gets_its_data_and_no_zeroing(tmp_path: Path,
                                                                workers: int) -> None:
    """A thin LV just made: its zero blocks are left alone (zeroing would provision them),
    by every worker. The stale bytes of this file show what was not touched."""
    codec = BlobCodec(KeySet.from_master(new_master_key()))
    data = b"".join(os.urandom(BS) if n % 3 == 0 else bytes(BS) for n in range(48))
    src = MemorySource(codec, data)
    path = tmp_path / "thin"
    path.write_bytes(b"\xee" * len(data))
    with Target(str(path), reads_zero=True) as target:
        _stream(codec, src, target, [], workers=workers, checkpoint_blocks=16)
    restored = path.read_bytes()
    for n in range(48):
        block = restored[n * BS:(n + 1) * BS]
        assert block == (data[n * BS:(n + 1) * BS] if n % 3 == 0 else b"\xee" * BS), n
