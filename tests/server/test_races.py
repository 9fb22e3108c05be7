"""Operations that overlap: verify, fetch, uploads, gc and commits running at once. Each
race is forced by a hook that blocks one side on an event, never by sleeps."""

from __future__ import annotations

import os
import threading

import pytest

from cdp_server.commit import commit
from cdp_server.datastore import Datastore
from cdp_server.errors import Conflict
from cdp_server.gc import gc
from cdp_server.verify import verify
from cdpcore import records
from cdpcore.api import ObjectKind, VerifyStatus

from .points import (
    BS,
    build_point,
    commit_direct,
    flip_stored_byte,
    half_dead_pack,
    new_codec,
    stored_point,
    upload_direct,
)
from .stored import age_everything


def test_verify_does_not_mark_a_copy_uploaded_while_it_ran(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A chunk found damaged earlier is uploaded again (healing) while verify runs; verify
    read the old, corrupted copy before. It must not mark the new, intact copy damaged:
    fetch would refuse it, and the point would stay unrestorable."""
    ds, built = stored_point(tmp_path / "ds")
    bad = built.block_ids["vda"][3]
    flip_stored_byte(tmp_path / "ds", "chunks", bad)
    ds.catalog.mark_damaged("web1", ObjectKind.chunks, [bad])  # by an earlier fetch
    read_bad, healed = threading.Event(), threading.Event()
    read_current = ds.read_current

    def slow_read(host: str, kind: ObjectKind, oid: bytes, loc):  # type: ignore[no-untyped-def]
        try:
            return read_current(host, kind, oid, loc)
        except Exception:
            if oid == bad:  # verify has read the corrupted copy: the agent heals it now
                read_bad.set()
                assert healed.wait(10)
            raise

    ds.read_current = slow_read  # type: ignore[method-assign]
    reports = []
    verifier = threading.Thread(target=lambda: reports.append(verify(ds)))
    verifier.start()
    assert read_bad.wait(10)
    result = ds.upload("web1", ObjectKind.chunks,
                       records.encode_records([(bad, built.chunks[bad])]))
    assert (result.stored, result.duplicates) == (1, 0)
    healed.set()
    verifier.join(10)
    ds.read_current = read_current  # type: ignore[method-assign]
    [report] = reports
    assert report.damaged_chunks == [bad.hex()]  # what verify read, when it read it
    # The healed copy stays intact and served.
    assert ds.catalog.damaged("web1") == []
    assert ds.catalog.present("web1", ObjectKind.chunks, [bad]) == {bad}
    [(oid, blob, _)] = ds.fetch("web1", ObjectKind.chunks, [bad])
    assert (oid, blob) == (bad, built.chunks[bad])
    assert verify(ds).damaged_points == []
    assert [r.verify for r in ds.catalog.point_rows("web1")] == [VerifyStatus.ok.value]


def test_a_missing_query_that_says_present_keeps_the_object_through_a_concurrent_gc(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """"missing" answers which objects the agent need not send, and refreshes their last
    seen so that gc's grace period keeps them until the commit. A gc sweeping between the
    lookup and the refresh must not delete an object the answer calls present."""
    ds, built = stored_point(tmp_path / "ds")
    ds.catalog.delete_points("web1", [built.point_id])  # pruned: only grace keeps them
    age_everything(tmp_path / "ds", 7200)
    ids = list(built.chunks)
    touch = ds.catalog.touch

    def gc_first(host: str, kind: ObjectKind, oids: list[bytes], now: float):  # type: ignore[no-untyped-def]
        # gc runs between the lookup and the refresh (from another thread it would wait
        # for nothing: uploads and "missing" take no lock)
        worker = threading.Thread(target=lambda: gc(ds, grace=3600))
        worker.start()
        worker.join(10)
        return touch(host, kind, oids, now)

    ds.catalog.touch = gc_first  # type: ignore[method-assign]
    absent = ds.missing("web1", ObjectKind.chunks, ids)
    ds.catalog.touch = touch  # type: ignore[method-assign]
    # Whatever the answer calls present is still stored (and stays, in grace).
    present = set(ids) - set(absent)
    assert ds.catalog.present("web1", ObjectKind.chunks, ids) >= present
    assert gc(ds, grace=3600).removed_chunks == 0
    assert ds.catalog.present("web1", ObjectKind.chunks, ids) >= present
    assert set(absent) == set(ids)  # gc took them all before the refresh: all to send


@pytest.mark.parametrize("with_new", [True, False], ids=["with-new", "duplicates-only"])
def test_an_upload_that_says_duplicate_keeps_the_object_through_a_concurrent_gc(
        tmp_path, with_new: bool) -> None:  # type: ignore[no-untyped-def]
    """An upload looks up which of its objects are stored (answered as duplicates, which
    the agent will not send again), then refreshes their last seen: with its new objects'
    pack (add_objects), or alone when nothing is new (touch). A gc sweeping between the
    lookup and the refresh must not leave the answer calling stored what gc deleted."""
    ds, built = stored_point(tmp_path / "ds")
    ds.catalog.delete_points("web1", [built.point_id])  # pruned: only grace keeps them
    age_everything(tmp_path / "ds", 7200)
    objects = dict(built.chunks)
    if with_new:
        objects.update((os.urandom(32), os.urandom(100)) for _ in range(3))
    hooked = "add_objects" if with_new else "touch"
    refresh = getattr(ds.catalog, hooked)
    ran = []

    def gc_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        # gc runs between the lookup and the refresh (from another thread it would wait
        # for nothing: uploads take no lock)
        if not ran:
            worker = threading.Thread(target=lambda: ran.append(gc(ds, grace=3600)))
            worker.start()
            worker.join(10)
        return refresh(*args, **kwargs)

    setattr(ds.catalog, hooked, gc_first)
    result = ds.upload("web1", ObjectKind.chunks, records.encode_records(list(objects.items())))
    setattr(ds.catalog, hooked, refresh)
    [report] = ran
    assert report.removed_chunks == len(built.chunks)  # type: ignore[attr-defined]
    # gc took every old chunk before the refresh: this upload stored them all again.
    assert (result.stored, result.duplicates) == (len(objects), 0)
    assert result.stored_bytes == sum(len(b) for b in objects.values())
    assert ds.catalog.present("web1", ObjectKind.chunks, objects) == set(objects)
    assert gc(ds, grace=3600).removed_chunks == 0  # in grace
    got = ds.fetch("web1", ObjectKind.chunks, list(objects))
    assert {oid: blob for oid, blob, _ in got} == objects


def test_a_fetch_reading_a_pack_that_gc_rewrites_meanwhile_gets_every_object(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A restore located its chunks in a pack, then gc rewrote that pack (its live objects
    moved to a new one, the old file deleted) before the read: the fetch looks again, reads
    the new copies, and marks nothing damaged."""
    ds, first, _ = half_dead_pack(tmp_path / "ds")
    shared = first.block_ids["vda"][:3]
    get_ranges = ds.store.get_ranges
    rewritten: list[object] = []
    reads = 0

    def gc_before_read(name: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        nonlocal reads
        reads += 1
        if reads == 1:  # the fetch's first read (gc's own reads come through here too)
            worker = threading.Thread(target=lambda: rewritten.append(gc(ds, grace=3600)))
            worker.start()
            worker.join(10)
        return get_ranges(name, ranges)

    ds.store.get_ranges = gc_before_read  # type: ignore[method-assign]
    got = ds.fetch("web1", ObjectKind.chunks, shared)
    ds.store.get_ranges = get_ranges  # type: ignore[method-assign]
    [report] = rewritten
    assert report.removed_chunks == 7 and report.freed_bytes > 0  # type: ignore[attr-defined]
    assert {oid: blob for oid, blob, _ in got} == {c: first.chunks[c] for c in shared}
    assert ds.catalog.damaged("web1") == []


def test_verify_reports_no_damage_in_a_point_pruned_and_collected_while_it_ran(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The weekly verify can run for hours, and the hourly maintenance (prune, then gc)
    runs beside it: a point verify listed may be pruned and its objects freed before
    verify reads them. That is retention at work, not damage: verify must not report it
    (exit 4 fails the verify unit: a false alarm), nor list the freed chunks."""
    ds, old = stored_point(tmp_path / "ds")
    new = build_point(new_codec(), "web1", {"vda": os.urandom(8 * BS)})
    commit_direct(ds, "web1", new)
    point_rows = ds.catalog.point_rows
    maintained: list[object] = []

    def listed_then_maintained(host: str | None = None):  # type: ignore[no-untyped-def]
        rows = point_rows(host)
        if not maintained:  # verify has listed the points: prune and gc run now
            maintained.append(ds.catalog.delete_points("web1", [old.point_id]))
            maintained.append(gc(ds, grace=0))
        return rows

    ds.catalog.point_rows = listed_then_maintained  # type: ignore[method-assign]
    report = verify(ds)
    ds.catalog.point_rows = point_rows  # type: ignore[method-assign]
    assert maintained[0] == [old.point_id]
    assert maintained[1].removed_chunks == len(old.chunks)  # type: ignore[attr-defined]
    assert (report.damaged_points, report.ranges, report.damaged_chunks,
            report.missing_chunks) == ([], [], [], [])
    assert [(r.point_id, r.verify) for r in point_rows("web1")] == [
        (new.point_id, VerifyStatus.ok.value)]
    assert ds.catalog.damaged("web1") == []


def test_damage_found_while_a_commit_checks_leaves_no_complete_page_above_it(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A commit checks its new pages, then marks them complete so later commits skip
    them. A verify (which takes no commit lock) may find a chunk below them damaged in
    between: the pages must not be marked complete, or every later point over that chunk
    would be taken without the agent being asked for it again."""
    ds, _ = Datastore.init(tmp_path / "ds")
    ds.add_host("web1")
    codec = new_codec()
    data = os.urandom(600 * BS)
    parent = build_point(codec, "web1", {"vda": data})
    changed = data[:BS] + os.urandom(BS) + data[2 * BS:]
    child = build_point(codec, "web1", {"vda": changed}, parent=parent.point_id)
    again = build_point(codec, "web1", {"vda": changed}, parent=child.point_id)
    for built in (parent, child):
        upload_direct(ds, "web1", built)
    commit(ds, "web1", parent.request)
    shared = parent.block_ids["vda"][0]  # in the leaf page the child's change rewrote
    insert_point = ds.catalog.insert_point

    def verify_meanwhile(*args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        flip_stored_byte(tmp_path / "ds", "chunks", shared)
        assert verify(ds).damaged_chunks == [shared.hex()]
        insert_point(*args, **kwargs)

    ds.catalog.insert_point = verify_meanwhile  # type: ignore[method-assign]
    commit(ds, "web1", child.request)
    ds.catalog.insert_point = insert_point  # type: ignore[method-assign]
    with pytest.raises(Conflict) as refused:
        commit(ds, "web1", again.request)
    assert refused.value.body["missing_chunks"] == [shared.hex()]  # type: ignore[index]
    assert refused.value.body["missing_pages"] == []  # type: ignore[index]
