"""Garbage collection: frees what no point references, spares what is in grace, rewrites
mostly dead packs, and never breaks a later commit."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cdp_server.commit import commit
from cdp_server.datastore import Datastore, RecoveryReport
from cdp_server.errors import StorageFull
from cdp_server.gc import PENDING_TIMEOUT, gc
from cdp_server.store import new_pack_name
from cdp_server.verify import verify
from cdpcore import records
from cdpcore.api import ObjectKind, Role
from cdpcore.client import MissingObjectsError
from cdpcore.errors import ServerError

from .points import (
    BS,
    build_point,
    flip_stored_byte,
    half_dead_pack,
    new_codec,
    push,
    restore,
    stored_point,
    upload_direct,
)
from .stored import age_everything, object_counts

REPO = Path(__file__).resolve().parents[2]



def _packs(data_dir) -> int:  # type: ignore[no-untyped-def]
    return len(list((data_dir / "objects" / "packs").rglob("*.pack")))


def test_gc_frees_unreferenced_and_keeps_live(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    admin = cdp_server.admin()
    codec = new_codec()
    a_data = os.urandom(100 * BS)
    b_data = a_data[:30 * BS] + os.urandom(70 * BS)
    a = build_point(codec, "web1", {"vda": a_data})
    b = build_point(codec, "web1", {"vda": b_data})
    push(agent, "web1", a)
    push(agent, "web1", b)
    extra = [codec.seal_block(os.urandom(BS)) for _ in range(5)]
    agent.upload("web1", ObjectKind.chunks, extra)  # type: ignore[arg-type]
    admin.delete_point("web1", a.point_id)
    packs_before = _packs(cdp_server.data_dir)

    report = admin.gc(grace=0)
    a_only = set(a.chunks) - set(b.chunks)
    assert len(a_only) == 70
    assert report.removed_chunks == 70 + 5
    assert report.removed_pages == 1  # A's single leaf, which is also its root
    assert report.live_chunks == 100
    assert report.kept_in_grace == 0
    blob_len = len(next(iter(a.chunks.values())))
    page_len = len(next(iter(a.pages.values())))
    # A's chunk pack rewritten (30 % live), the extra pack and A's page pack deleted
    assert report.freed_bytes == 75 * blob_len + page_len
    assert _packs(cdp_server.data_dir) == packs_before - 2
    assert agent.missing("web1", ObjectKind.chunks, list(a_only)) == a_only
    assert agent.missing("web1", ObjectKind.chunks, list(b.chunks)) == set()
    reader = cdp_server.client(tokens[Role.restore])
    assert restore(reader, codec, "web1", b.point_id) == {"vda": b_data}
    assert admin.verify().damaged_points == []


def test_gc_spares_objects_in_grace(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    admin = cdp_server.admin()
    codec = new_codec()
    fresh = [codec.seal_block(os.urandom(BS)) for _ in range(4)]
    agent.upload("web1", ObjectKind.chunks, fresh)  # type: ignore[arg-type]
    report = admin.gc(grace=3600)
    assert (report.removed_chunks, report.kept_in_grace) == (0, 4)
    # an hour later; a backup in flight asks "missing" for two of them: those survive
    age_everything(cdp_server.data_dir, 7200)
    asked = [fresh[0][0], fresh[1][0]]
    assert agent.missing("web1", ObjectKind.chunks, asked) == set()
    report = admin.gc(grace=3600)
    assert (report.removed_chunks, report.kept_in_grace) == (2, 2)
    assert agent.missing("web1", ObjectKind.chunks, [i for i, _ in fresh]) == {
        fresh[2][0], fresh[3][0]}


def test_commit_after_gc_names_what_gc_removed(cdp_server) -> None:  # type: ignore[no-untyped-def]
    """A subtree checked for a pruned point is not trusted once GC has swept under it."""
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    admin = cdp_server.admin()
    codec = new_codec()
    data = os.urandom(600 * BS)
    first = build_point(codec, "web1", {"vda": data})
    push(agent, "web1", first)
    admin.delete_point("web1", first.point_id)
    age_everything(cdp_server.data_dir, 7200)
    # a leaf page survives in grace (asked about), its chunks do not
    leaf = next(p for p in first.pages if p.hex() != first.request.volumes[0].root)
    agent.missing("web1", ObjectKind.pages, list(first.pages))
    admin.gc(grace=3600)
    again = build_point(codec, "web1", {"vda": data})
    assert leaf in again.pages
    agent.upload("web1", ObjectKind.pages, list(again.pages.items()))
    try:
        agent.commit("web1", again.request)
    except MissingObjectsError as exc:
        assert set(exc.missing.missing_chunks) == {c.hex() for c in again.chunks}
    else:
        raise AssertionError("commit over swept chunks was accepted")
    push(agent, "web1", again)
    assert restore(cdp_server.client(tokens[Role.restore]), codec, "web1",
                   again.point_id) == {"vda": data}


def test_gc_cleans_orphan_packs_at_restart(cdp_server) -> None:  # type: ignore[no-untyped-def]
    orphan = cdp_server.data_dir / "objects" / "packs" / "ff" / ("f" * 32 + ".pack")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"half written by a crashed server")
    cdp_server.kill()
    cdp_server.restart()
    assert not orphan.exists()
    assert '"cleaned_orphans": 1' in cdp_server.log()


def test_start_up_recovery_waits_for_a_running_gc(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """`cdp-server serve` starting while `cdp-server gc` rewrites a pack: recovery must not
    take gc's new pack, pending while it is written, for a crash's leftover. Two datastore
    objects, as two processes: the commit lock is a file lock."""
    gc_side, _ = Datastore.init(tmp_path / "ds")
    gc_side.add_host("web1")
    built = build_point(new_codec(), "web1", {"vda": os.urandom(4 * BS)})
    server_side = Datastore.open(tmp_path / "ds")
    with gc_side.commit_lock():
        pack = new_pack_name()
        gc_side.catalog.begin_pack(pack, 4)
        gc_side.store.put(pack, [b"gc's"])
        recovery = threading.Thread(target=lambda: reports.append(server_side.recover()))
        reports: list[RecoveryReport] = []
        recovery.start()
        recovery.join(0.5)
        assert recovery.is_alive()  # waits for the lock gc holds, and says so
        assert "waiting for a running `cdp-server gc`" in caplog.text
        chunk = next(iter(built.chunks))
        gc_side.catalog.add_objects("web1", ObjectKind.chunks, pack, [(chunk, 0, 4, b"crc!")],
                                    time.time())
    recovery.join(10)
    assert reports == [RecoveryReport(pending_packs=0, orphan_objects=0, temp_files=0)]
    assert [(p.name, p.state) for p in server_side.catalog.packs()] == [(pack, "done")]
    assert server_side.store.get_ranges(pack, [(0, 4)]) == [b"gc's"]


def test_gc_stopped_after_deleting_leaves_no_complete_mark_above_a_hole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A later commit skips the subtrees marked complete: gc clears the marks of pages no
    point uses before it deletes anything, so a gc that stops half-way (killed, an error)
    cannot leave a complete page above deleted chunks."""
    ds, built = stored_point(tmp_path / "ds", 600)
    ds.catalog.delete_points("web1", [built.point_id])
    db = sqlite3.connect(tmp_path / "ds" / "catalog.sqlite")
    complete = "SELECT count(*) FROM objects WHERE complete"
    assert db.execute(complete).fetchone()[0] > 0
    delete = ds.catalog.delete_unseen

    def killed_after_the_chunks(host: str, kind: ObjectKind, ids: list[bytes],
                                cutoff: float) -> int:
        delete(host, kind, ids, cutoff)
        raise KeyboardInterrupt  # gc stopped with the chunks gone, the pages still there

    ds.catalog.delete_unseen = killed_after_the_chunks  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        gc(ds, grace=-1)
    assert db.execute("SELECT count(*) FROM objects WHERE kind = 0").fetchone()[0] == 0
    assert db.execute(complete).fetchone()[0] == 0
    db.close()


@pytest.mark.parametrize("finish", ["next gc", "start-up"])
def test_a_gc_stopped_before_deleting_a_pack_file_leaves_no_file_behind(
        tmp_path, finish: str) -> None:  # type: ignore[no-untyped-def]
    """GC lets go of a pack (all dead, or its live objects moved by a rewrite) and then
    deletes its file. Stopped in between (killed, an I/O error), the catalog keeps the
    pack as retired, and the next gc or the next start deletes the file: the datastore
    does not keep a file nothing points to until some later restart."""
    ds, first, second = half_dead_pack(tmp_path / "ds")

    def stopped(name: str) -> None:
        raise KeyboardInterrupt

    ds.store.delete = stopped  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        gc(ds, grace=3600)
    [retired] = [p.name for p in ds.catalog.packs() if p.state == "retired"]
    assert retired in set(ds.store.list())  # the file is still there

    ds = Datastore.open(tmp_path / "ds")
    if finish == "next gc":
        gc(ds, grace=3600)
    else:
        assert ds.recover().orphan_objects >= 1
    packs = ds.catalog.packs()
    assert {p.state for p in packs} == {"done"}
    assert set(ds.store.list()) == {p.name for p in packs}
    assert retired not in set(ds.store.list())
    got = ds.fetch("web1", ObjectKind.chunks, list(second.chunks))
    stored_first = {c: first.chunks.get(c, blob) for c, blob in second.chunks.items()}
    assert {oid: blob for oid, blob, _ in got} == stored_first  # shared ones: first's seal
    assert verify(ds).damaged_points == []


def test_an_upload_that_outlasts_the_pending_timeout_is_refused_not_left_without_its_pack(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """GC sweeps a pack pending for longer than PENDING_TIMEOUT (a stalled upload, or a
    forward clock jump). The upload may finish while gc sweeps: gc forgets the row first,
    and only while still pending, so the upload then fails whole (503, the client retries)
    instead of making its objects visible in a pack file gc deletes."""
    ds, _ = Datastore.init(tmp_path / "ds")
    ds.add_host("web1")
    built = build_point(new_codec(), "web1", {"vda": os.urandom(8 * BS)})
    body = records.encode_records(list(built.chunks.items()))
    written, resume = threading.Event(), threading.Event()
    packs: list[str] = []
    put, delete = ds.store.put, ds.store.delete

    def stalled_put(name: str, parts: list[bytes]) -> None:
        put(name, parts)
        packs.append(name)
        db = sqlite3.connect(tmp_path / "ds" / "catalog.sqlite")
        with db:  # the upload's pending row now looks older than the timeout
            db.execute("UPDATE packs SET created = created - ? WHERE name = ?",
                       (2 * PENDING_TIMEOUT, name))
        db.close()
        written.set()
        assert resume.wait(10)

    def sweep_delete(name: str) -> None:
        delete(name)
        if name in packs and not resume.is_set():  # gc deletes the upload's pack:
            resume.set()  # the upload finishes right now, before gc's next step
            uploader.join(10)

    outcome: list[object] = []

    def upload() -> None:
        try:
            outcome.append(ds.upload("web1", ObjectKind.chunks, body))
        except ServerError as exc:
            outcome.append(exc)

    ds.store.put, ds.store.delete = stalled_put, sweep_delete  # type: ignore[method-assign]
    uploader = threading.Thread(target=upload)
    uploader.start()
    assert written.wait(10)
    gc(ds, grace=86400)
    uploader.join(10)
    assert resume.is_set() and not uploader.is_alive()
    ds.store.put, ds.store.delete = put, delete  # type: ignore[method-assign]
    # No row points at a missing pack: the upload stored nothing, and said so.
    assert {p.name for p in ds.catalog.packs()} <= set(ds.store.list())
    assert ds.catalog.present("web1", ObjectKind.chunks, list(built.chunks)) == set()
    assert ds.catalog.packs() == [] and list(ds.store.list()) == []
    [refused] = outcome
    assert isinstance(refused, ServerError) and refused.status == 503, refused
    assert "is no longer registered" in str(refused)
    # The client's retry stores the objects, and the point commits and reads back.
    assert ds.upload("web1", ObjectKind.chunks, body).stored == len(built.chunks)
    ds.upload("web1", ObjectKind.pages, records.encode_records(list(built.pages.items())))
    commit(ds, "web1", built.request)
    assert len(ds.fetch("web1", ObjectKind.chunks, list(built.chunks))) == len(built.chunks)


def test_gc_on_a_full_datastore_frees_dead_packs_where_a_rewrite_finds_no_room(
        small_fs) -> None:  # type: ignore[no-untyped-def]
    """On a full datastore, prune and gc are what free space. A mostly dead pack is
    rewritten, which needs room for its live objects: with none, gc must skip that
    rewrite, leave no pending pack of it behind, and still delete the packs nothing lives
    in. It failed instead (507), before it reached them, run after run: the datastore
    stayed full for good."""
    data_dir = small_fs(4) / "ds"
    ds, first, second = half_dead_pack(data_dir)  # its first pack: 3 of 10 chunks live
    codec = new_codec()
    for per_pack in (16, 1):  # then the rewrite's 3 chunks do not fit
        with pytest.raises(StorageFull):
            while True:
                ds.upload("web1", ObjectKind.chunks, records.encode_records(
                    [codec.seal_block(os.urandom(BS)) for _ in range(per_pack)]))
    with pytest.raises(StorageFull):  # full indeed: the rewrite's 3 chunks would not fit
        ds.store.put(new_pack_name(), [os.urandom(3 * BS)])
    report = gc(ds, grace=0)  # no point references the fillers
    assert report.freed_bytes > 1 << 20
    packs = ds.catalog.packs()
    assert {p.state for p in packs} == {"done"}
    assert set(ds.store.list()) == {p.name for p in packs}
    got = ds.fetch("web1", ObjectKind.chunks, list(second.chunks))
    assert {oid: blob for oid, blob, _ in got} == {
        c: first.chunks.get(c, blob) for c, blob in second.chunks.items()}
    # With room again, the next gc rewrites the mostly dead pack: every byte left is live.
    gc(ds, grace=0)
    usage = ds.catalog.pack_usage()
    assert {p.name: p.size for p in ds.catalog.packs()} == {
        name: size for name, (_, size) in usage.items()}
    assert verify(ds).damaged_points == []


@pytest.mark.parametrize("damage", ["flipped", "missing"])
def test_gc_names_a_host_it_skips_and_fails(cdp_server, damage: str) -> None:  # type: ignore[no-untyped-def]
    """A host with an index page gc cannot read is skipped whole (the page's children are
    unknown, so nothing of the host may be swept), and never collected again until the
    page is repaired or its points deleted: the GcReport (admin API and `cdp-server gc
    --json`), the human output and the exit code say so, by host, point and page."""
    admin = cdp_server.admin()
    codec = new_codec()
    built = {}
    for name, blocks in (("web1", 600), ("web2", 8)):
        agent = cdp_server.client(cdp_server.add_host(name)[Role.agent])
        built[name] = build_point(codec, name, {"vda": os.urandom(blocks * BS)})
        push(agent, name, built[name])
        dead = [codec.seal_block(os.urandom(BS)) for _ in range(5)]
        agent.upload(name, ObjectKind.chunks, dead)  # type: ignore[arg-type]
    web1 = built["web1"]
    leaf = next(p for p in web1.pages if p.hex() != web1.request.volumes[0].root)
    if damage == "flipped":
        flip_stored_byte(cdp_server.data_dir, "pages", leaf)
    else:
        db = sqlite3.connect(cdp_server.data_dir / "catalog.sqlite")
        with db:  # the catalog lost the page's row (a hand edit, a bad restore of it)
            db.execute("DELETE FROM objects WHERE id = ?", (leaf,))
        db.close()
    chunks_before = object_counts(cdp_server.data_dir, "web1")["chunks"]

    report = admin.gc(grace=0)
    assert report.removed_chunks == 5  # web2's dead chunks: the other hosts are collected
    [skipped] = report.skipped_hosts
    assert skipped.host == "web1"
    assert leaf.hex() in skipped.reason and web1.point_id in skipped.reason
    assert "vda" in skipped.reason
    assert object_counts(cdp_server.data_dir, "web1")["chunks"] == chunks_before

    data = str(cdp_server.data_dir)
    out = subprocess.run([sys.executable, "-m", "cdp_server", "gc", "--grace", "0",
                          "--data", data, "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 4, out
    doc = json.loads(out.stdout)
    assert doc["skipped_hosts"] == [skipped.model_dump()]
    assert doc["removed_chunks"] == 0
    human = subprocess.run([sys.executable, "-m", "cdp_server", "gc", "--grace", "0",
                            "--data", data], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert human.returncode == 4, human
    assert f"skipped host web1: {skipped.reason}" in human.stdout.splitlines()
    assert object_counts(cdp_server.data_dir, "web1")["chunks"] == chunks_before


def test_a_gc_report_without_skipped_hosts_still_parses() -> None:
    """Clients parse reports of servers from before `skipped_hosts`: it defaults to none."""
    from cdpcore.api import GcReport

    old = {"live_chunks": 1, "removed_chunks": 0, "removed_pages": 0, "freed_bytes": 0,
           "kept_in_grace": 0}
    assert GcReport.model_validate(old).skipped_hosts == []


def test_commits_go_on_while_gc_marks_and_what_they_reference_survives(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """GC's mark reads every index page of every point: on a large datastore it takes
    minutes, and agents committing every minute used to wait for all of it (gc held the
    commit lock throughout). A point committed while gc marks is marked under the lock
    before anything is deleted: with no grace, its objects survive only through it."""
    ds, a = stored_point(tmp_path / "ds", 64)
    b = build_point(new_codec(), "web1", {"vda": os.urandom(64 * BS)})
    upload_direct(ds, "web1", b)
    read = ds.read_object
    committed: list[object] = []

    def commit_b_while_marking(oid, loc):  # type: ignore[no-untyped-def]
        if not committed:
            committed.append(None)
            worker = threading.Thread(target=lambda: committed.append(
                commit(ds, "web1", b.request)))
            worker.start()
            worker.join(5)
            assert not worker.is_alive(), "the commit waited for gc's mark"
        return read(oid, loc)

    ds.read_object = commit_b_while_marking  # type: ignore[method-assign]
    report = gc(ds, grace=-1)
    assert len(committed) == 2  # B was committed during the mark
    assert (report.removed_chunks, report.removed_pages, report.live_chunks) == (0, 0, 128)
    for built in (a, b):
        assert ds.catalog.present("web1", ObjectKind.chunks, set(built.chunks)) \
            == set(built.chunks)
        assert ds.catalog.present("web1", ObjectKind.pages, set(built.pages)) \
            == set(built.pages)
