"""Hole-aware reading: the holes of a sparse image file are ZERO_ID blocks, never read,
so a 1 TiB image with little data is backed up without reading the terabyte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdpcore import format as fmt
from cdpcore.index import Geometry, decode_page
from hotcopy import scan
from hotcopy.scan import data_ranges
from hotcopy.verify import open_point, verify_point
from tests.server.stored import object_counts

from .conftest import Agent, write_at
from .test_backup import _point

BS = 16 * 1024
GiB = 1 << 30
TiB = 1 << 40


def _nonzero_blocks(agent: Agent, geometry: Geometry, root: bytes) -> dict[int, bytes]:
    """Block index -> chunk ID of the point's non-zero blocks, walking only the non-zero
    pages of its index (a 1 TiB volume has 64 Mi blocks)."""
    source = agent.remote.page_source(agent.host)
    out: dict[int, bytes] = {}
    level_pages = {0: root}
    for level in range(geometry.height, -1, -1):
        got = source.get_pages([p for p in level_pages.values() if p != fmt.ZERO_ID])
        below: dict[int, bytes] = {}
        for index, pid in level_pages.items():
            if pid == fmt.ZERO_ID:
                continue
            for j, entry in enumerate(decode_page(bytes(got[pid]), pid).ids()):
                if entry != fmt.ZERO_ID:
                    below[index * fmt.PAGE_FANOUT + j] = entry
        level_pages = below
        if level == 0:
            out = below
    return out


def _stored(cdp_server, host: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return object_counts(cdp_server.data_dir, host)


def test_data_ranges_skip_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(GiB)
    write_at(path, 64 << 20, b"x" * 8192)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert data_ranges(fd, 0, GiB) == [(64 << 20, 8192)]
        assert data_ranges(fd, (64 << 20) + 4096, GiB) == [((64 << 20) + 4096, 4096)]
        assert data_ranges(fd, 0, 64 << 20) == []
    finally:
        os.close(fd)


def test_a_file_of_too_many_extents_is_all_data(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_DATA_RANGES extents the list would outgrow the agent's memory bound: the
    file is read whole (holes read as zeros), as on a filesystem without holes."""
    path = tmp_path / "sparse.img"
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    for n in range(4):
        write_at(path, n * (8 << 20), b"x" * 4096)
    monkeypatch.setattr(scan, "MAX_DATA_RANGES", 3)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert data_ranges(fd, 0, 64 << 20) == [(0, 64 << 20)]
        assert data_ranges(fd, 0, 20 << 20) == [(0, 4096), (8 << 20, 4096), (16 << 20, 4096)]
    finally:
        os.close(fd)


def test_a_sparse_terabyte_reads_only_its_data_and_an_unchanged_point_adds_no_objects(
        agent: Agent, cdp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "big.img"
    with open(image, "wb") as f:
        f.truncate(TiB)
    blobs = {100 * GiB: os.urandom(1 << 20), 700 * GiB + BS: os.urandom(BS),
             TiB - BS: os.urandom(BS)}
    for offset, data in blobs.items():
        write_at(image, offset, data)
    expected = {(offset + i) // BS: agent.codec.keys.chunk_id(data[i:i + BS])
                for offset, data in blobs.items() for i in range(0, len(data), BS)}
    info = _point(agent, [str(image)])
    assert info.size == TiB
    assert info.stats.scanned_bytes == len(expected) * BS  # only the data was read
    assert info.stats.new_chunks == len(expected) == 66
    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    vol = manifest.volumes[0]
    geometry = Geometry(size=vol.size, block_size=vol.block_size)
    assert _nonzero_blocks(agent, geometry, bytes.fromhex(vol.root)) == expected
    assert verify_point(agent.remote, agent.host, agent.codec, info.point_id).ok

    stored = _stored(cdp_server, agent.host)
    again = _point(agent, [str(image)])
    assert (again.stats.scanned_bytes, again.stats.changed_bytes) == (len(expected) * BS, 0)
    assert (again.stats.new_chunks, again.stats.new_bytes) == (0, 0)
    assert _stored(cdp_server, agent.host) == stored  # no new chunk or index page
    assert open_point(agent.remote, agent.host, agent.codec,
                      again.point_id).volumes[0].root == vol.root

    # Punching a hole where data was makes those blocks zero in the next point.
    fd = os.open(image, os.O_WRONLY)
    try:
        os.truncate(fd, TiB - BS)
        os.truncate(fd, TiB)
    finally:
        os.close(fd)
    third = _point(agent, [str(image)])
    assert third.stats.changed_bytes == BS
    vol3 = open_point(agent.remote, agent.host, agent.codec, third.point_id).volumes[0]
    del expected[(TiB - BS) // BS]
    assert _nonzero_blocks(agent, geometry, bytes.fromhex(vol3.root)) == expected
