"""Damage at rest against real agent points (hotcopy.backup of an image file) on the real
server: what verify marks is reported by the restore at the exact bytes it affects, and
the next point of the agent heals what it still can."""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdp_server.datastore import CATALOG_FILE
from cdpcore.api import ObjectKind, Role, VerifyStatus
from cdpcore.client import CdpClient
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.errors import IntegrityError, NotFoundError
from cdpcore.keys import new_master_key
from hotcopy.backup import backup
from hotcopy.verify import open_point, verify_point
from rescue.stream import BlockDamaged, StreamOptions, stream_volume
from rescue.target import Target

from .points import flip_stored_byte
from .stored import object_location, remove_object
from .test_ops import _cli

BS = 16 * 1024  # the agent's default block size


@dataclass
class Host:
    name: str
    remote: CdpClient
    codec: BlobCodec
    state: Path
    image: Path

    def point(self, data: bytes) -> str:
        self.image.write_bytes(data)
        return backup(self.remote, self.name, self.codec, [str(self.image)], self.state,
                      workers=2).point_id

    def root(self, point_id: str) -> bytes:
        return open_point(self.remote, self.name, self.codec, point_id).volumes[0].root_id

    def restore(self, point_id: str, out: Path) -> bytes:
        """The point's one volume streamed to `out` as the rescue does; its bytes."""
        manifest = open_point(self.remote, self.name, self.codec, point_id)
        vol = manifest.volumes[0]
        out.write_bytes(b"")
        os.truncate(out, vol.size)
        with Target(str(out)) as target:
            stream_volume(self.remote, self.name, self.codec.with_chunk_ids(manifest.chunk_ids),
                          vol, target, 0, options=StreamOptions(workers=1))
        return out.read_bytes()


@pytest.fixture
def host(cdp_server, tmp_path: Path) -> Host:  # type: ignore[no-untyped-def]
    name = f"h{uuid.uuid4().hex[:10]}"
    token = cdp_server.add_host(name)[Role.agent]
    return Host(name, cdp_server.client(token), BlobCodec(KeySet.from_master(new_master_key())),
                tmp_path / "state", tmp_path / "disk.img")


def _leaf(host: Host, root: bytes, j: int) -> bytes:
    """The ID of leaf `j` under a height-1 root."""
    page = host.remote.fetch(host.name, ObjectKind.pages, [root])[root]
    return page[8 + 32 * j:8 + 32 * (j + 1)]


def test_a_restore_stops_at_the_damaged_leaf_not_at_the_first_leaf_fetched_with_it(
        cdp_server, host: Host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(600 * BS)  # three leaves: blocks 0-255, 256-511, 512-599
    point = host.point(data)
    leaf = _leaf(host, host.root(point), 1)
    flip_stored_byte(cdp_server.data_dir, "pages", leaf)
    report = cdp_server.admin().verify()
    assert [(r.offset, r.length, r.chunk) for r in report.ranges] == [
        (256 * BS, 256 * BS, leaf.hex())]
    out = tmp_path / "restored.img"
    with pytest.raises(BlockDamaged) as exc:
        host.restore(point, out)
    # The blocks before the damaged leaf are restored, verified; from it on nothing is.
    assert (exc.value.offset, exc.value.length) == (256 * BS, 344 * BS)
    assert leaf.hex() in str(exc.value)
    restored = out.read_bytes()
    assert restored[:256 * BS] == data[:256 * BS]
    assert restored[256 * BS:] == bytes(344 * BS)


def test_a_fetch_names_an_object_marked_damaged_as_damaged_not_missing(
        cdp_server, host: Host) -> None:  # type: ignore[no-untyped-def]
    point = host.point(os.urandom(300 * BS))
    leaf = _leaf(host, host.root(point), 1)
    flip_stored_byte(cdp_server.data_dir, "pages", leaf)
    assert cdp_server.admin().verify().damaged_points == [point]
    with pytest.raises(NotFoundError) as exc:
        host.remote.fetch(host.name, ObjectKind.pages, [leaf])
    assert f"0 pages missing and 1 damaged on host {host.name!r}: {leaf.hex()}" in str(exc.value)


def test_a_damaged_leaf_over_a_changed_block_does_not_fail_the_next_point(
        cdp_server, host: Host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The next point patches its index from the server's pages; one of them marked
    damaged by verify must not fail it (nor every point until a full scan): the tree is
    built from the agent's own IDs instead."""
    data = bytearray(os.urandom(600 * BS))
    first = host.point(bytes(data))
    leaf = _leaf(host, host.root(first), 1)
    flip_stored_byte(cdp_server.data_dir, "pages", leaf)
    assert cdp_server.admin().verify().damaged_points == [first]
    data[300 * BS:300 * BS + 10] = os.urandom(10)  # under the damaged leaf
    second = host.point(bytes(data))
    assert host.restore(second, tmp_path / "second.img") == data
    report = cdp_server.admin().verify()
    # The first point's leaf is no longer anyone's: that point stays damaged, the new is ok.
    assert report.damaged_points == [first]
    statuses = {p.point_id: p.verify for p in host.remote.points(host.name)}
    assert statuses == {first: VerifyStatus.damaged, second: VerifyStatus.ok}
    assert verify_point(host.remote, host.name, host.codec, second).ok


def test_a_chunk_the_catalog_lost_is_sent_again_by_the_next_point(
        cdp_server, host: Host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A chunk whose row is gone (verify: "missing") lies below pages an earlier commit
    marked complete; the next commit must not skip them, or the point is committed over
    the hole, the agent never sends the block again, and every later point is damaged."""
    data = os.urandom(300 * BS)
    first = host.point(data)
    lost = host.codec.keys.chunk_id(data[7 * BS:8 * BS])
    remove_object(cdp_server.data_dir, "chunks", lost)
    report = cdp_server.admin().verify()
    assert (report.missing_chunks, report.damaged_points) == ([lost.hex()], [first])
    second = host.point(data)  # nothing changed
    report = cdp_server.admin().verify()
    assert (report.missing_chunks, report.damaged_points) == ([], [])
    assert host.restore(first, tmp_path / "first.img") == data
    assert host.restore(second, tmp_path / "second.img") == data


def test_a_pack_that_cannot_be_read_is_damage_named_not_a_failed_verify(
        cdp_server, host: Host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A read error of the datastore's disk (EIO; here EISDIR: a directory where the pack
    was) makes its objects damaged: verify names the points and bytes, a fetch and a
    restore name the chunk, instead of failing with 500 as a whole."""
    data = os.urandom(30 * BS)
    point = host.point(data)
    first = host.codec.keys.chunk_id(data[:BS])
    pack, _, _ = object_location(cdp_server.data_dir, "chunks", first)
    pack.unlink()
    pack.mkdir()
    report = cdp_server.admin().verify()
    assert report.damaged_points == [point]
    assert len(report.damaged_chunks) == 30
    assert (report.ranges[0].offset, report.ranges[0].chunk) == (0, first.hex())
    with pytest.raises(NotFoundError, match=f"0 chunks missing and 1 damaged.*{first.hex()}"):
        host.remote.fetch(host.name, ObjectKind.chunks, [first])
    with pytest.raises(BlockDamaged) as exc:
        host.restore(point, tmp_path / "restored.img")
    assert (exc.value.offset, exc.value.chunk) == (0, first)


def _damage_manifest(data_dir: Path, point: str) -> None:
    """Flip a bit of a point's sealed manifest where the catalog keeps it."""
    db = sqlite3.connect(data_dir / CATALOG_FILE)
    try:
        with db:
            (blob,) = db.execute("SELECT manifest FROM points WHERE point_id = ?",
                                 (point,)).fetchone()
            raw = bytearray(base64.b64decode(blob))
            raw[len(raw) // 2] ^= 0x01
            db.execute("UPDATE points SET manifest = ? WHERE point_id = ?",
                       (base64.b64encode(raw).decode(), point))
    finally:
        db.close()


def test_a_damaged_manifest_is_named_by_its_point(cdp_server, host: Host) -> None:  # type: ignore[no-untyped-def]
    """A byte of a manifest changed in the catalog: opening the point (agent verify, a
    restore) fails naming the point and host, not the hex of the manifest's AAD."""
    point = host.point(os.urandom(30 * BS))
    _damage_manifest(cdp_server.data_dir, point)
    with pytest.raises(IntegrityError) as exc:
        verify_point(host.remote, host.name, host.codec, point)
    assert str(exc.value).startswith(f"the manifest of point {point} of host {host.name!r} "
                                     "failed authentication: ")


def test_a_damaged_manifest_of_the_latest_point_does_not_stop_later_points(
        cdp_server, host: Host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Without a local state of the latest point (lost, or another point's), the agent
    reads the latest manifest for its tracking generation: one damaged there must not
    fail this point and every later one (the latest point would stay that one)."""
    data = os.urandom(30 * BS)
    first = host.point(data)
    _damage_manifest(cdp_server.data_dir, first)
    shutil.rmtree(host.state)
    second = host.point(data)
    assert host.restore(second, tmp_path / "second.img") == data
    assert verify_point(host.remote, host.name, host.codec, second).ok


def test_verify_finds_a_point_whose_manifest_changed_in_the_catalog(
        cdp_server, host: Host) -> None:  # type: ignore[no-untyped-def]
    """SQLite's checks see the structure of its pages, not a changed byte inside a value:
    a point whose sealed manifest changed cannot be opened by any restore, and verify
    must not call it ok."""
    data = os.urandom(30 * BS)
    first = host.point(data)
    second = host.point(data)
    _damage_manifest(cdp_server.data_dir, first)
    report = cdp_server.admin().verify()
    assert (report.damaged_points, report.ranges, report.damaged_chunks) == ([first], [], [])
    statuses = {p.point_id: p.verify for p in host.remote.points(host.name)}
    assert statuses == {first: VerifyStatus.damaged, second: VerifyStatus.ok}
    done = _cli("verify", "--data", str(cdp_server.data_dir), check=False)
    assert done.returncode == 4
    assert f"  point {first}: its volumes or manifest changed in the catalog since its " \
           "commit" in done.stdout.splitlines()


def test_agent_verify_reports_a_damaged_index_page_and_checks_the_rest(
        cdp_server, host: Host) -> None:  # type: ignore[no-untyped-def]
    """`cdp-agent verify` stopped at the first page the server refused, with the raw fetch
    error (exit 7, "unknown host or point"), and checked nothing after it."""
    point = host.point(os.urandom(600 * BS))
    leaf = _leaf(host, host.root(point), 1)
    flip_stored_byte(cdp_server.data_dir, "pages", leaf)
    cdp_server.admin().verify()  # marks it: the server refuses to send it
    result = verify_point(host.remote, host.name, host.codec, point)
    assert not result.ok
    assert (result.blocks, result.chunks_checked, result.missing, result.damaged) == (
        256, 256, [], [])
    (line,) = result.unreadable
    assert line.startswith(f"volume disk.img:whole: blocks from 256 (byte {256 * BS}) not "
                           "checked: ")
    assert f"0 pages missing and 1 damaged on host {host.name!r}: {leaf.hex()}" in line


def test_agent_verify_tells_a_lost_chunk_from_one_the_server_marked_damaged(
        cdp_server, host: Host) -> None:  # type: ignore[no-untyped-def]
    """The server refuses both with a 404; verify listed both as missing."""
    blocks = [os.urandom(BS) for _ in range(4)]
    point = host.point(b"".join(blocks))
    lost, damaged = (host.codec.keys.chunk_id(b) for b in blocks[1:3])
    remove_object(cdp_server.data_dir, "chunks", lost)
    flip_stored_byte(cdp_server.data_dir, "chunks", damaged)
    cdp_server.admin().verify()  # marks the flipped chunk damaged
    result = verify_point(host.remote, host.name, host.codec, point)
    assert (result.chunks_checked, result.missing, result.damaged, result.unreadable) == (
        2, [lost.hex()], [damaged.hex()], [])
