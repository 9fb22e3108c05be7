"""Explicit change lists (`backup(changed=...)`): only the blocks touching the listed
byte ranges are read while the local state is trusted; otherwise a full scan."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cdpcore.errors import UsageError
from hotcopy.backup import backup
from hotcopy.changes import block_runs, merge_runs

from .conftest import Agent, assert_point_equals, write_at
from .images import MiB
from .test_backup import _point

BS = 16 * 1024


def _listed(agent: Agent, sources: list[str], changed: dict[str, list[tuple[int, int]]]):  # type: ignore[no-untyped-def]
    return backup(agent.remote, agent.host, agent.codec, sources, agent.state_dir, workers=2,
                  changed=changed)


def test_block_runs_merge_overlapping_and_adjacent_ranges_and_clip_to_the_volume() -> None:
    # Volume at 1 MiB of 1 MiB: the first range ends before it, the last starts after it.
    ranges = [(0, MiB), (MiB + 10, 1), (MiB + BS - 1, 2), (MiB + 5 * BS, BS), (2 * MiB, 9)]
    assert block_runs(ranges, MiB, MiB, BS) == [(0, 2), (5, 1)]
    assert merge_runs([(7, 2), (0, 3), (3, 1), (8, 4), (20, 0)]) == [(0, 4), (7, 5)]


def test_only_listed_ranges_are_read_and_the_point_matches_the_disk(
        agent: Agent, gpt_image: Path, tmp_path: Path) -> None:
    _point(agent, [str(gpt_image)])
    write_at(gpt_image, 6 * MiB + 100, b"\x01" * 4096)  # one block
    write_at(gpt_image, 10 * MiB + 16000, os.urandom(65537))  # crosses 5 blocks
    listed = shutil.copy(gpt_image, tmp_path / "listed.img")
    # A write the caller does not list is not read: the caller's list is trusted.
    write_at(gpt_image, 20 * MiB, b"\x03" * BS)
    link = tmp_path / "link.img"
    link.symlink_to(gpt_image)
    info = _listed(agent, [str(gpt_image)], {str(link): [(6 * MiB + 100, 4096),
                                                          (10 * MiB + 16000, 65537)]})
    assert info.stats.scanned_bytes == 6 * BS
    assert (info.stats.changed_bytes, info.stats.new_chunks) == (6 * BS, 6)
    manifest = assert_point_equals(agent, info.point_id, Path(listed))
    assert manifest.tracking["mode"] == "list" and manifest.tracking["full_scan"] is False
    # The next scan-mode point reads everything and finds the unlisted write.
    info = _point(agent, [str(gpt_image)])
    assert (info.stats.changed_bytes, info.stats.new_chunks) == (BS, 1)
    assert_point_equals(agent, info.point_id, gpt_image)


def test_a_change_list_without_trusted_state_is_a_full_scan(
        agent: Agent, gpt_image: Path, tmp_path: Path) -> None:
    first = _point(agent, [str(gpt_image)])
    shutil.rmtree(agent.state_dir)
    write_at(gpt_image, 7 * MiB, b"\x44" * BS)
    info = _listed(agent, [str(gpt_image)], {str(gpt_image): []})
    # Every block with data is read (the image is sparse: holes are not), the new one too.
    assert info.stats.scanned_bytes == first.stats.scanned_bytes + BS
    assert info.stats.new_chunks == 1
    manifest = assert_point_equals(agent, info.point_id, Path(shutil.copy(gpt_image, tmp_path / "c")))
    assert manifest.tracking["full_scan"] is True


def test_an_empty_change_list_reads_nothing(agent: Agent, gpt_image: Path) -> None:
    _point(agent, [str(gpt_image)])
    info = _listed(agent, [str(gpt_image)], {str(gpt_image): []})
    assert (info.stats.scanned_bytes, info.stats.new_chunks) == (0, 0)


def test_bad_change_lists_are_refused(agent: Agent, gpt_image: Path) -> None:
    with pytest.raises(UsageError, match=r"^change list names /nonexistent.img, which is not "
                       r"a source of this point \(sources: "):
        _listed(agent, [str(gpt_image)], {"/nonexistent.img": []})
    with pytest.raises(UsageError, match=r"range \(-1, 10\) has a negative offset or length"):
        _listed(agent, [str(gpt_image)], {str(gpt_image): [(-1, 10)]})
