"""Verify finds a flipped byte at rest, names the points, volumes and byte ranges, and a
re-upload heals it."""

from __future__ import annotations

import os

import pytest

from cdpcore.api import ObjectKind, Role, VerifyStatus
from cdpcore.client import MissingObjectsError
from cdpcore.errors import NotFoundError

from .points import BS, build_point, flip_stored_byte, new_codec, push, restore


def test_verify_finds_and_heals_a_flipped_chunk(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    reader = cdp_server.client(tokens[Role.restore])
    admin = cdp_server.admin()
    codec = new_codec()
    vda = os.urandom(600 * BS)
    vdb = os.urandom(10 * BS)
    first = build_point(codec, "web1", {"vda": vda, "vdb": vdb})
    second = build_point(codec, "web1", {"vda": vda[:BS] + os.urandom(599 * BS), "vdb": vdb})
    push(agent, "web1", first)
    push(agent, "web1", second)
    clean = admin.verify()
    assert clean.damaged_chunks == [] and clean.ranges == []
    assert clean.checked_chunks == 600 + 599 + 10
    assert [p.verify for p in reader.points("web1")] == [VerifyStatus.ok] * 2

    bad_a = first.block_ids["vda"][517]  # only in the first point
    bad_b = first.block_ids["vdb"][3]  # shared by both points
    flip_stored_byte(cdp_server.data_dir, "chunks", bad_a)
    flip_stored_byte(cdp_server.data_dir, "chunks", bad_b)
    report = admin.verify()
    assert sorted(report.damaged_chunks) == sorted([bad_a.hex(), bad_b.hex()])
    assert report.missing_chunks == []
    assert report.damaged_points == sorted([first.point_id, second.point_id])
    ranges = {(r.point_id, r.volume, r.offset, r.length, r.chunk) for r in report.ranges}
    assert ranges == {
        (first.point_id, "vda", 517 * BS, BS, bad_a.hex()),
        (first.point_id, "vdb", 3 * BS, BS, bad_b.hex()),
        (second.point_id, "vdb", 3 * BS, BS, bad_b.hex()),
    }
    assert [p.verify for p in reader.points("web1")] == [VerifyStatus.damaged] * 2
    assert set(agent.damaged("web1")) == {bad_a, bad_b}
    assert agent.missing("web1", ObjectKind.chunks, [bad_a, bad_b]) == {bad_a, bad_b}
    with pytest.raises(NotFoundError) as exc:
        reader.fetch("web1", ObjectKind.chunks, [bad_a])
    assert "damaged" in str(exc.value) or "missing" in str(exc.value)

    # healing: the next backup holding those blocks uploads them again
    result = agent.upload("web1", ObjectKind.chunks,
                          [(bad_a, first.chunks[bad_a]), (bad_b, first.chunks[bad_b])])
    assert (result.stored, result.duplicates) == (2, 0)
    assert agent.damaged("web1") == []
    healed = admin.verify()
    assert healed.damaged_points == [] and healed.ranges == []
    assert [p.verify for p in reader.points("web1")] == [VerifyStatus.ok] * 2
    assert restore(reader, codec, "web1", first.point_id) == {"vda": vda, "vdb": vdb}


def test_verify_maps_a_damaged_page_to_its_whole_span(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    admin = cdp_server.admin()
    codec = new_codec()
    built = build_point(codec, "web1", {"vda": os.urandom(600 * BS)})
    push(agent, "web1", built)
    # the leaf covering blocks 256..511: its first entry is block 256's chunk ID
    leaf = next(p for p, page in built.pages.items()
                if page[8:40] == built.block_ids["vda"][256])
    flip_stored_byte(cdp_server.data_dir, "pages", leaf)
    report = admin.verify()
    assert [(r.volume, r.offset, r.length, r.chunk) for r in report.ranges] == [
        ("vda", 256 * BS, 256 * BS, leaf.hex())]
    assert report.damaged_points == [built.point_id]
    assert agent.missing("web1", ObjectKind.pages, [leaf]) == {leaf}
    # a new point over the same tree is refused until the page is uploaded again
    again = built.request.model_copy(update={"point_id": "ab" * 16})
    with pytest.raises(MissingObjectsError) as exc:
        agent.commit("web1", again)
    assert exc.value.missing.missing_pages == [leaf.hex()]
    agent.upload("web1", ObjectKind.pages, [(leaf, built.pages[leaf])])
    agent.commit("web1", again)
    assert admin.verify().damaged_points == []


def test_verify_clears_a_damage_mark_when_the_copy_reads_intact_again(cdp_server) -> None:  # type: ignore[no-untyped-def]
    """A mark left by a read that failed once (the pack put back from a copy, a transient
    fault of the storage) on a copy that now matches its checksum: verify calls the point
    ok, so fetch must serve the chunk, and the point must restore, not stay refused as
    "damaged" until some backup happens to upload that block again."""
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    reader = cdp_server.client(tokens[Role.restore])
    admin = cdp_server.admin()
    codec = new_codec()
    vda = os.urandom(20 * BS)
    built = build_point(codec, "web1", {"vda": vda})
    push(agent, "web1", built)
    bad = built.block_ids["vda"][7]
    flip_stored_byte(cdp_server.data_dir, "chunks", bad)
    assert admin.verify().damaged_chunks == [bad.hex()]
    assert agent.damaged("web1") == [bad]
    flip_stored_byte(cdp_server.data_dir, "chunks", bad)  # the same byte: intact again
    report = admin.verify()
    assert (report.damaged_points, report.damaged_chunks) == ([], [])
    assert [p.verify for p in reader.points("web1")] == [VerifyStatus.ok]
    assert agent.damaged("web1") == []
    assert restore(reader, codec, "web1", built.point_id) == {"vda": vda}
