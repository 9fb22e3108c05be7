"""The order in which a scan reads a volume: tasks of at most a segment's blocks, and for a
full read the volume's two halves in turn (hotcopy.scan.tasks, halves, alternate)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotcopy import sealpool
from hotcopy.scan import alternate, halves, tasks

from .conftest import Agent, assert_point_equals
from .test_backup import _point

MiB = 1 << 20


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
