"""The order in which a scan reads a volume: tasks of at most a segment's blocks, and for a
full read the volume's two halves in turn (hotcopy.scan.tasks, halves, alternate)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotcopy import scan, sealpool
from hotcopy.scan import alternate, halves, tasks
from hotcopy.state import IdFile

from .conftest import Agent, assert_point_equals
from .test_backup import _point

MiB = 1 << 20
GiB = 1 << 30
BS = 16 * 1024


def test_tasks_gather_scattered_runs_and_cut_long_ones() -> None:
    assert list(tasks([(0, 1), (5, 2), (9, 1)], 4)) == [((0, 1), (5, 2), (9, 1))]
    assert list(tasks([(0, 3), (10, 3)], 4)) == [((0, 3), (10, 1)), ((11, 2),)]
    assert list(tasks([(8, 10)], 4)) == [((8, 4),), ((12, 4),), ((16, 2),)]
    assert list(tasks([], 4)) == []


def test_halves_cut_at_the_middle_block() -> None:
    assert halves([(0, 10)]) == ([(0, 5)], [(5, 5)])
    assert halves([(0, 3), (10, 3)]) == ([(0, 3)], [(10, 3)])
    assert halves([(0, 2), (10, 6)]) == ([(0, 2), (10, 2)], [(12, 4)])
    assert halves([(4, 1)]) == ([], [(4, 1)])
    assert halves([]) == ([], [])


def test_alternate_takes_one_of_each_then_the_rest() -> None:
    a, b, c, x = ((0, 1),), ((1, 1),), ((2, 1),), ((9, 1),)
    assert list(alternate([a, b, c], [x])) == [a, x, b, c]
    assert list(alternate([], [x])) == [x]


runs_strategy = st.lists(st.tuples(st.integers(0, 50), st.integers(1, 40)), max_size=12).map(
    lambda gaps: [(sum(g + n for g, n in gaps[:i]) + g, n) for i, (g, n) in enumerate(gaps)])


@given(runs_strategy, st.integers(1, 64))
def test_the_halves_in_turn_read_every_block_once(runs: list[tuple[int, int]],
                                                   per_task: int) -> None:
    front, back = halves(runs)
    order = list(alternate(tasks(front, per_task), tasks(back, per_task)))
    read = [b for task in order for first, count in task for b in range(first, first + count)]
    assert sorted(read) == [b for first, count in runs for b in range(first, first + count)]
    assert len(read) == len(set(read))
    for task in order:
        assert sum(count for _, count in task) <= per_task
        assert list(task) == sorted(task)
    assert abs(sum(n for _, n in front) - sum(n for _, n in back)) <= 1


def test_a_full_scan_reads_the_halves_in_turn_and_the_point_is_exact(
        agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(40 * MiB) + bytes(24 * MiB))  # data first, then zeros
    submitted: list[tuple[tuple[int, int], ...]] = []
    submit = sealpool.SealPool.submit

    def recording(self: sealpool.SealPool, seg: sealpool.Segment):  # type: ignore[no-untyped-def]
        submitted.append(seg.runs)
        return submit(self, seg)

    monkeypatch.setattr(sealpool.SealPool, "submit", recording)
    info = _point(agent, [str(image)])
    # 16 KiB blocks, 1024 to a 16 MiB task: blocks 0-2047 and 2048-4095 in turn.
    assert submitted == [((0, 1024),), ((2048, 1024),), ((1024, 1024),), ((3072, 1024),)]
    assert info.stats.scanned_bytes == 64 * MiB
    assert_point_equals(agent, info.point_id, image)


def test_a_fragmented_full_read_keeps_releasing_the_id_file(
        agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One block of data between long holes: the holes are handled first, so the reads
    must release the ID file themselves (they released it only at a task starting on a
    multiple of RELEASE_BLOCKS, which such a read never has), or a terabyte's mapping
    stays mapped. The point is still exact with pages released under tasks in flight."""
    monkeypatch.setattr(scan, "RELEASE_BLOCKS", 4096)
    monkeypatch.setattr(scan, "SEGMENT_BYTES", 16 * BS)
    image = tmp_path / "sparse.img"
    with open(image, "wb") as f:
        f.truncate(GiB)
        for block in range(0, GiB // BS, 336):
            f.seek(block * BS)
            f.write(os.urandom(BS))
    reading = False
    released: list[int] = []
    submit, release = sealpool.SealPool.submit, IdFile.release

    def submitting(self: sealpool.SealPool, seg: sealpool.Segment):  # type: ignore[no-untyped-def]
        nonlocal reading
        reading = True
        return submit(self, seg)

    def releasing(self: IdFile, end_block: int) -> None:
        if reading:
            released.append(end_block)
        release(self, end_block)

    monkeypatch.setattr(sealpool.SealPool, "submit", submitting)
    monkeypatch.setattr(IdFile, "release", releasing)
    info = _point(agent, [str(image)])
    assert info.stats.scanned_bytes == 196 * BS
    # Each half's 98 blocks in tasks of 16 (six full ones spanning 15 * 336 + 1 blocks,
    # more than 4096, then one of 2): a release after every full task, the furthest after
    # the back half's sixth, which ends past data block 193.
    assert len(released) == 12 and max(released) == 193 * 336 + 1
    assert_point_equals(agent, info.point_id, image)
