"""Commits: refusing missing objects, idempotent retries, conflicts, listing, restores."""

from __future__ import annotations

import base64
import json
import math
import os
import time

import pytest
import requests
from pydantic import ValidationError

from cdp_server.commit import commit
from cdp_server.datastore import Datastore
from cdpcore import format as fmt
from cdpcore import index, records
from cdpcore.api import API_PREFIX, POINT_LIST, ObjectKind, PointStats, Role, VolumeWire
from cdpcore.client import MissingObjectsError
from cdpcore.errors import NotFoundError, ServerError
from cdpcore.manifest import Manifest, VolumeRecord

from .points import BS, build_point, flip_stored_byte, new_codec, push, restore, upload_all


@pytest.fixture
def web1(cdp_server):  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    return cdp_server.client(tokens[Role.agent]), cdp_server.client(tokens[Role.restore])


def _disk(blocks: int) -> bytes:
    data = bytearray(os.urandom(blocks * BS))
    data[5 * BS:9 * BS] = bytes(4 * BS)  # an all-zero run: ZERO_ID entries, not stored
    return bytes(data)


def test_point_round_trip_byte_for_byte(web1) -> None:  # type: ignore[no-untyped-def]
    agent, reader = web1
    codec = new_codec()
    # 600 blocks: a two-level tree; a short last block
    vols = {"vda": _disk(600) + os.urandom(1000), "vdb": bytes(64 * BS)}
    built = build_point(codec, "web1", vols)
    info = push(agent, "web1", built)
    assert info.point_id == built.point_id
    assert info.size == sum(len(v) for v in vols.values())
    assert restore(reader, codec, "web1", built.point_id) == vols
    detail = reader.point("web1", built.point_id)
    records = [VolumeRecord(**v.model_dump()) for v in detail.volumes]
    manifest = Manifest.open(codec, "web1", built.point_id,
                             base64.b64decode(detail.manifest), records)
    assert manifest.point_id == built.point_id
    assert reader.host("web1").points == 1


def test_commit_refuses_missing_objects_and_names_them(web1) -> None:  # type: ignore[no-untyped-def]
    agent, reader = web1
    codec = new_codec()
    built = build_point(codec, "web1", {"vda": _disk(600)})
    # every page but no chunk: the server must name exactly the absent chunks
    agent.upload("web1", ObjectKind.pages, list(built.pages.items()))
    held_back = sorted(built.chunks)[:7]
    agent.upload("web1", ObjectKind.chunks,
                 [(c, b) for c, b in built.chunks.items() if c not in held_back])
    with pytest.raises(MissingObjectsError) as exc:
        agent.commit("web1", built.request)
    assert exc.value.status == 409
    assert exc.value.missing.missing_chunks == [c.hex() for c in held_back]
    assert exc.value.missing.missing_pages == []
    assert reader.points("web1") == []
    with pytest.raises(NotFoundError):
        reader.point("web1", built.point_id)
    # a missing leaf page is named too (its chunks cannot be known yet)
    root = bytes.fromhex(built.request.volumes[0].root)
    other = build_point(codec, "web1", {"vda": _disk(600)})
    leaves = [p for p in other.pages if p != bytes.fromhex(other.request.volumes[0].root)]
    agent.upload("web1", ObjectKind.chunks, list(other.chunks.items()))
    agent.upload("web1", ObjectKind.pages,
                 [(p, d) for p, d in other.pages.items() if p != leaves[0]])
    with pytest.raises(MissingObjectsError) as exc2:
        agent.commit("web1", other.request)
    assert exc2.value.missing.missing_pages == [leaves[0].hex()]
    # after the upload the same commit succeeds
    agent.upload("web1", ObjectKind.chunks, [(c, built.chunks[c]) for c in held_back])
    assert agent.commit("web1", built.request).point_id == built.point_id
    assert root != bytes(32)


def test_identical_retry_is_idempotent_and_different_content_conflicts(
        cdp_server, web1) -> None:  # type: ignore[no-untyped-def]
    agent, reader = web1
    codec = new_codec()
    built = build_point(codec, "web1", {"vda": _disk(20)})
    upload_all(agent, "web1", built)
    url = f"{cdp_server.url}{API_PREFIX}/hosts/web1/points"
    headers = {"Authorization": f"Bearer {agent._token}", "Content-Type": "application/json"}
    first = requests.post(url, data=built.request.model_dump_json(), headers=headers,
                          verify=str(cdp_server.ca_path), timeout=30)
    again = requests.post(url, data=built.request.model_dump_json(), headers=headers,
                          verify=str(cdp_server.ca_path), timeout=30)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    changed = built.request.model_copy(update={"created": built.request.created + 1})
    with pytest.raises(ServerError) as exc:
        agent.commit("web1", changed)
    assert exc.value.status == 409
    assert "already exists" in str(exc.value)
    assert [p.created for p in reader.points("web1")] == [built.request.created]


def test_commit_checks_geometry(web1) -> None:  # type: ignore[no-untyped-def]
    agent, _ = web1
    built = build_point(new_codec(), "web1", {"vda": _disk(20)})
    upload_all(agent, "web1", built)
    vol = built.request.volumes[0]
    wrong_height = built.request.model_copy(update={"volumes": [
        VolumeWire(**{**vol.model_dump(), "height": 1})]})
    with pytest.raises(ServerError) as exc:
        agent.commit("web1", wrong_height)
    assert exc.value.status == 422
    assert "height 1 does not match" in str(exc.value)
    # claims to be a 600-block volume over a 20-block tree: the root page is too short
    too_big = built.request.model_copy(update={"volumes": [
        VolumeWire(**{**vol.model_dump(), "size": 600 * BS, "height": 1})]})
    with pytest.raises(ServerError) as exc2:
        agent.commit("web1", too_big)
    assert exc2.value.status == 422
    assert "where level 1 with 3 entries belongs" in str(exc2.value)


def test_a_page_of_another_shape_is_refused_also_when_complete_or_walked(web1) -> None:  # type: ignore[no-untyped-def]
    """Pages the walk does not read again (complete from an earlier point, or walked
    already in this commit) are checked too: a 3-entry leaf cannot be the root of a
    5-block volume (such a point could never be restored)."""
    agent, _ = web1
    codec = new_codec()
    three = build_point(codec, "web1", {"vda": os.urandom(3 * BS)})
    push(agent, "web1", three)  # its leaf is now complete
    leaf = three.request.volumes[0]
    reused = three.request.model_copy(update={"point_id": "b" * 32, "volumes": [
        VolumeWire(**{**leaf.model_dump(), "name": "vdb", "size": 5 * BS})]})
    with pytest.raises(ServerError) as exc:
        agent.commit("web1", reused)
    assert exc.value.status == 422
    assert f"index page {leaf.root} has 3 entries where 5 belong" in str(exc.value)
    two = build_point(codec, "web1", {"vdc": os.urandom(2 * BS)})
    upload_all(agent, "web1", two)  # not committed: its leaf is walked in this commit
    vol = two.request.volumes[0]
    twice = two.request.model_copy(update={"volumes": [
        vol, VolumeWire(**{**vol.model_dump(), "name": "vdd", "size": 7 * BS})]})
    with pytest.raises(ServerError) as exc2:
        agent.commit("web1", twice)
    assert exc2.value.status == 422
    assert f"index page {vol.root} is used as level 0 with 2 entries and as level 0 with " \
        "7 entries" in str(exc2.value)
    assert [p.point_id for p in agent.points("web1")] == [three.point_id]


def test_commit_of_volumes_too_large_for_the_catalog_is_refused(web1) -> None:  # type: ignore[no-untyped-def]
    """Empty volumes of any size walk no tree; their sizes must still fit the catalog's
    64-bit integers, or the commit would fail with a 500 after validation."""
    agent, reader = web1
    built = build_point(new_codec(), "web1", {"vda": _disk(2)})
    upload_all(agent, "web1", built)
    bs = 4 * 1024 * 1024

    def empty(name: str, size: int) -> VolumeWire:
        return VolumeWire(name=name, size=size, block_size=bs, root=fmt.ZERO_ID.hex(),
                          height=index.Geometry(size, bs).height)

    for volumes, total in (([empty("huge", 1 << 70)], 1 << 70),
                           ([empty("a", 1 << 62), empty("b", 1 << 62)], 1 << 63)):
        with pytest.raises(ServerError) as exc:
            agent.commit("web1", built.request.model_copy(update={"volumes": volumes}))
        assert exc.value.status == 422
        assert f"bad commit: the volumes add up to {total} bytes, more than a point may " \
            f"hold ({(1 << 63) - 1} bytes)" in str(exc.value)
    assert reader.points("web1") == []


def test_half_uploaded_point_is_never_listed(web1) -> None:  # type: ignore[no-untyped-def]
    agent, reader = web1
    codec = new_codec()
    done = build_point(codec, "web1", {"vda": _disk(40)})
    push(agent, "web1", done)
    half = build_point(codec, "web1", {"vda": _disk(40)})
    agent.upload("web1", ObjectKind.chunks, list(half.chunks.items())[:10])
    assert [p.point_id for p in reader.points("web1")] == [done.point_id]
    with pytest.raises(NotFoundError):
        reader.point("web1", half.point_id)


def test_listing_filters(web1) -> None:  # type: ignore[no-untyped-def]
    agent, reader = web1
    codec = new_codec()
    base = time.time() - 1000
    ids = []
    for i in range(5):
        built = build_point(codec, "web1", {"vda": os.urandom(2 * BS)}, created=base + i * 10)
        push(agent, "web1", built)
        ids.append(built.point_id)
    assert [p.point_id for p in reader.points("web1")] == ids
    assert [p.point_id for p in reader.points("web1", limit=2)] == ids[3:]
    assert [p.point_id for p in reader.points("web1", after=base + 15)] == ids[2:]
    assert [p.point_id for p in reader.points("web1", before=base + 15)] == ids[:2]
    assert [p.point_id for p in reader.points("web1", after=base, before=base + 40)] == ids[1:4]
    assert reader.host("web1").latest == base + 40
    # a time that is no time is refused, not answered with an empty list
    for bound in ("before", "after"):
        for value in ("nan", "inf"):
            with pytest.raises(ServerError) as exc:
                reader.points("web1", **{bound: float(value)})
            assert exc.value.status == 422 and bound in str(exc.value)


def test_incremental_commit_reuses_checked_subtrees(web1) -> None:  # type: ignore[no-untyped-def]
    """A second point that changed one block uploads one chunk and its path of pages;
    the commit succeeds although nothing else was re-sent."""
    agent, reader = web1
    codec = new_codec()
    data = bytearray(_disk(600))
    first = build_point(codec, "web1", {"vda": bytes(data)})
    push(agent, "web1", first)
    data[300 * BS:301 * BS] = os.urandom(BS)
    second = build_point(codec, "web1", {"vda": bytes(data)})
    new_chunks = agent.missing("web1", ObjectKind.chunks, list(second.chunks))
    new_pages = agent.missing("web1", ObjectKind.pages, list(second.pages))
    assert len(new_chunks) == 1
    assert len(new_pages) == 2  # the changed leaf and the root
    agent.upload("web1", ObjectKind.chunks, [(c, second.chunks[c]) for c in new_chunks])
    agent.upload("web1", ObjectKind.pages, [(p, second.pages[p]) for p in new_pages])
    agent.commit("web1", second.request)
    assert restore(reader, codec, "web1", second.point_id) == {"vda": bytes(data)}
    geometry = index.Geometry(size=len(data), block_size=BS)
    assert geometry.height == 1


def test_commit_beside_its_parent_still_names_every_missing_or_damaged_chunk(
        cdp_server, web1) -> None:  # type: ignore[no-untyped-def]
    """With a parent, the commit looks up only the entries that changed against the
    parent's complete pages; it must still refuse a changed entry that is absent, and an
    unchanged one that went bad since (damage clears "complete")."""
    agent, reader = web1
    codec = new_codec()
    data = bytearray(_disk(600))
    first = build_point(codec, "web1", {"vda": bytes(data)})
    push(agent, "web1", first)
    data[10 * BS:11 * BS] = os.urandom(BS)
    data[300 * BS:301 * BS] = os.urandom(BS)
    second = build_point(codec, "web1", {"vda": bytes(data)}, parent=first.point_id)
    new_chunks = sorted(agent.missing("web1", ObjectKind.chunks, list(second.chunks)))
    assert len(new_chunks) == 2
    agent.upload("web1", ObjectKind.pages, list(second.pages.items()))
    agent.upload("web1", ObjectKind.chunks, [(new_chunks[0], second.chunks[new_chunks[0]])])
    with pytest.raises(MissingObjectsError) as exc:
        agent.commit("web1", second.request)
    assert exc.value.missing.missing_chunks == [new_chunks[1].hex()]
    agent.upload("web1", ObjectKind.chunks, [(new_chunks[1], second.chunks[new_chunks[1]])])
    agent.commit("web1", second.request)
    assert restore(reader, codec, "web1", second.point_id) == {"vda": bytes(data)}

    # A chunk both points share goes bad; reading it marks it damaged.
    shared = second.block_ids["vda"][20]
    flip_stored_byte(cdp_server.data_dir, "chunks", shared)
    with pytest.raises(NotFoundError):
        reader.fetch("web1", ObjectKind.chunks, [shared])
    data[30 * BS:31 * BS] = os.urandom(BS)  # the third point changes the same leaf
    third = build_point(codec, "web1", {"vda": bytes(data)}, parent=second.point_id)
    changed = third.block_ids["vda"][30]
    agent.upload("web1", ObjectKind.pages, list(third.pages.items()))
    agent.upload("web1", ObjectKind.chunks, [(changed, third.chunks[changed])])
    with pytest.raises(MissingObjectsError) as exc3:
        agent.commit("web1", third.request)
    assert exc3.value.missing.missing_chunks == [shared.hex()]


def test_a_non_finite_or_negative_duration_is_refused_and_stores_nothing(
        cdp_server, web1) -> None:  # type: ignore[no-untyped-def]
    """JSON has no NaN or Infinity: such a duration was stored as null, the commit answered
    500 with the point stored, and the host's listing parsed for no client any more."""
    agent, reader = web1
    built = build_point(new_codec(), "web1", {"vda": _disk(4)})
    upload_all(agent, "web1", built)
    url = f"{cdp_server.url}{API_PREFIX}/hosts/web1/points"
    headers = {"Authorization": f"Bearer {agent._token}", "Content-Type": "application/json"}
    body = built.request.model_dump_json()
    assert '"duration":0.0' in body
    for literal in ("NaN", "Infinity", "-Infinity", "1e999", "-1.0"):
        resp = requests.post(url, data=body.replace('"duration":0.0', f'"duration":{literal}'),
                             headers=headers, verify=str(cdp_server.ca_path), timeout=30)
        assert resp.status_code == 422, (literal, resp.status_code, resp.text)
        assert "duration" in resp.text
        assert "finite" in resp.text or "greater than or equal to 0" in resp.text
        listing = requests.get(url, headers=headers, verify=str(cdp_server.ca_path), timeout=30)
        assert POINT_LIST.validate_json(listing.content) == []
        with pytest.raises(NotFoundError):
            reader.point("web1", built.point_id)
    assert agent.commit("web1", built.request).point_id == built.point_id
    assert [p.point_id for p in reader.points("web1")] == [built.point_id]


def test_a_point_stored_with_an_invalid_duration_is_repaired_when_the_server_opens(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Servers before the check stored a NaN duration as null (and a negative one as sent),
    and then no client could parse the host's listing. Opening the datastore sets such a
    duration to 0 in the stored stats and in the rendered listing; other points and the
    rest of the stats stay as they were."""
    ds, _ = Datastore.init(tmp_path / "ds")
    ds.add_host("web1")
    codec = new_codec()
    ids = []
    for n in range(3):
        built = build_point(codec, "web1", {"vda": _disk(4)})
        ds.upload("web1", ObjectKind.chunks, records.encode_records(list(built.chunks.items())))
        ds.upload("web1", ObjectKind.pages, records.encode_records(list(built.pages.items())))
        request = built.request.model_copy(
            update={"stats": PointStats(new_chunks=n + 1, duration=1.5)})
        commit(ds, "web1", request)
        ids.append(built.point_id)
    before = json.loads(ds.catalog.points_json("web1", None, None, None))
    db = ds.catalog.read()  # what the old servers stored: in stats, head and doc alike
    db.execute("DELETE FROM repairs")  # a catalog of a server before the repair
    for point_id, value in ((ids[0], "null"), (ids[2], "-2.0")):
        db.execute("UPDATE points SET stats = replace(stats, '\"duration\":1.5', ?), "
                   "head = replace(head, '\"duration\":1.5', ?), "
                   "doc = replace(doc, '\"duration\":1.5', ?) WHERE point_id = ?",
                   (f'"duration":{value}',) * 3 + (point_id,))
    with pytest.raises(ValidationError):
        POINT_LIST.validate_json(ds.catalog.points_json("web1", None, None, None))

    reopened = Datastore.open(tmp_path / "ds")
    listing = POINT_LIST.validate_json(reopened.catalog.points_json("web1", None, None, None))
    assert [(p.point_id, p.stats.new_chunks, p.stats.duration) for p in listing] == \
        [(ids[0], 1, 0.0), (ids[1], 2, 1.5), (ids[2], 3, 0.0)]
    after = json.loads(reopened.catalog.points_json("web1", None, None, None))
    for entry in (*before, *after):
        entry["stats"].pop("duration")
    assert after == before
    row = reopened.catalog.point("web1", ids[0])
    assert row is not None and PointStats.model_validate_json(row.stats).duration == 0.0
    # once only: a later open leaves the points alone
    db.execute("UPDATE points SET stats = replace(stats, '\"duration\":0.0', "
               "'\"duration\":null') WHERE point_id = ?", (ids[0],))
    row = Datastore.open(tmp_path / "ds").catalog.point("web1", ids[0])
    assert row is not None and '"duration":null' in row.stats


def test_a_point_whose_answer_cannot_be_made_is_not_stored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The commit builds its answer before it inserts the point: a failure there (here a
    duration the API models would refuse, slipped past them) leaves nothing stored behind
    the error, so the host's listing stays readable and a corrected retry is no conflict."""
    ds, _ = Datastore.init(tmp_path / "ds")
    ds.add_host("web1")
    built = build_point(new_codec(), "web1", {"vda": _disk(4)})
    ds.upload("web1", ObjectKind.chunks, records.encode_records(list(built.chunks.items())))
    ds.upload("web1", ObjectKind.pages, records.encode_records(list(built.pages.items())))
    unchecked = built.request.model_copy(
        update={"stats": PointStats.model_construct(duration=math.inf)})
    with pytest.raises(ValidationError):
        commit(ds, "web1", unchecked)
    assert ds.catalog.point("web1", built.point_id) is None
    assert POINT_LIST.validate_json(ds.catalog.points_json("web1", None, None, None)) == []
    assert commit(ds, "web1", built.request)[1] is True
