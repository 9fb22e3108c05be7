"""Backups against the real CDP server: byte-for-byte points under a scripted workload,
incremental uploads of exactly the changed blocks, fallback to full scans, healing."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from cdpcore import format as fmt
from cdpcore import runcmd
from cdpcore.api import ObjectKind, PointInfo
from cdpcore.errors import ServerError
from hotcopy import backup as backup_module
from hotcopy import scan
from hotcopy import verify as verify_module
from hotcopy.backup import BackupOptions, backup, default_workers
from hotcopy.errors import SourceError, StateBusy
from hotcopy.remote import Remote
from hotcopy.state import StateDir
from hotcopy.transfer import RetryPolicy
from hotcopy.verify import iter_volume, open_point, verify_point
from tests.server.stored import object_counts

from .conftest import Agent, assert_point_equals, corrupt_chunk, write_at
from .images import MiB

BS = 16 * 1024


def _point(agent: Agent, sources: list[str]) -> PointInfo:
    return backup(agent.remote, agent.host, agent.codec, sources, agent.state_dir, workers=2)


def test_workload_points_are_byte_for_byte_and_incrementals_send_only_changed_blocks(
        agent: Agent, gpt_image: Path, tmp_path: Path) -> None:
    rng = random.Random(4)
    p2 = 5 * MiB  # partition 2 (ext4) starts here
    first = _point(agent, [str(gpt_image)])
    copies = [(first.point_id, shutil.copy(gpt_image, tmp_path / "copy0.img"))]
    assert first.stats.new_chunks > 0
    for step in range(1, 4):
        # Scattered 4 KiB writes in distinct 16 KiB blocks, plus one sequential run.
        blocks = rng.sample(range(p2 // BS + 2, (p2 + 20 * MiB) // BS), 12)
        for b in blocks:
            write_at(gpt_image, b * BS + rng.randrange(0, BS, 4096), rng.randbytes(4096))
        run_start = p2 + 21 * MiB + step * 64 * 1024
        write_at(gpt_image, run_start, rng.randbytes(64 * 1024))  # 4 whole blocks
        info = _point(agent, [str(gpt_image)])
        assert info.parent == copies[-1][0]
        assert info.stats.new_chunks == len(blocks) + 4
        assert info.stats.changed_bytes == (len(blocks) + 4) * BS
        copies.append((info.point_id, shutil.copy(gpt_image, tmp_path / f"copy{step}.img")))
    # Every point, the old ones too, still reads back exactly as the disk was.
    for point_id, copy in copies:
        manifest = assert_point_equals(agent, point_id, Path(copy))
        assert manifest.layout.disk("disk.img").table == "gpt"
    result = verify_point(agent.remote, agent.host, agent.codec, copies[-1][0])
    assert result.ok and result.chunks_checked > 0


def test_verify_checks_every_chunk_also_past_its_memory_bound(
        agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks A B C A: with room for two checked IDs the set is emptied at C, and the
    second A is checked again; every chunk is checked at least once either way."""
    image = tmp_path / "dup.img"
    a, b, c = (os.urandom(BS) for _ in range(3))
    image.write_bytes(a + b + c + a)
    info = _point(agent, [str(image)])
    assert verify_point(agent.remote, agent.host, agent.codec, info.point_id).chunks_checked == 3
    monkeypatch.setattr(verify_module, "MAX_SEEN", 2)
    result = verify_point(agent.remote, agent.host, agent.codec, info.point_id)
    assert result.ok and (result.blocks, result.chunks_checked) == (4, 4)


def test_default_workers_are_one_more_than_the_cpus_but_at_most_three() -> None:
    """About 80 MiB each: one per CPU of a large server would pass the unit's MemoryMax."""
    assert [default_workers(n) for n in (None, 1, 2, 3, 64)] == [3, 2, 3, 3, 3]


def test_changes_touching_many_index_leaves_rebuild_the_index_from_the_id_file(
        agent: Agent, gpt_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_PATCHED_LEAVES the index is built again (bounded memory) instead of
    patched in memory: the point still reads back exactly, and old points too."""
    first = _point(agent, [str(gpt_image)])
    first_copy = Path(shutil.copy(gpt_image, tmp_path / "first.img"))
    leaf_span = fmt.PAGE_FANOUT * BS  # one index leaf covers 4 MiB of a volume
    p2 = 5 * MiB
    for n in range(3):  # blocks under three different leaves of partition 2
        write_at(gpt_image, p2 + n * leaf_span + BS, os.urandom(4096))
    monkeypatch.setattr(backup_module, "MAX_PATCHED_LEAVES", 2)

    patched: list[int] = []
    real_update = backup_module.index.update

    def counting_update(geometry: Any, source: Any, root: bytes, changes: Any,
                        sink: Any) -> bytes:
        patched.append(len(changes))
        return real_update(geometry, source, root, changes, sink)

    monkeypatch.setattr(backup_module.index, "update", counting_update)
    info = _point(agent, [str(gpt_image)])
    assert info.parent == first.point_id and info.stats.new_chunks == 3
    assert patched == [0, 0]  # the boot area and partition 1; partition 2 was rebuilt
    assert_point_equals(agent, info.point_id, Path(shutil.copy(gpt_image, tmp_path / "c")))
    assert_point_equals(agent, first.point_id, first_copy)


def test_unchanged_disk_makes_a_point_that_sends_nothing(agent: Agent, gpt_image: Path) -> None:
    _point(agent, [str(gpt_image)])
    info = _point(agent, [str(gpt_image)])
    assert (info.stats.new_chunks, info.stats.changed_bytes) == (0, 0)


def test_missing_state_falls_back_to_a_full_scan_that_uploads_nothing_known(
        agent: Agent, gpt_image: Path, tmp_path: Path) -> None:
    _point(agent, [str(gpt_image)])
    shutil.rmtree(agent.state_dir)
    write_at(gpt_image, 6 * MiB, b"\x5a" * BS)
    info = _point(agent, [str(gpt_image)])
    manifest = assert_point_equals(agent, info.point_id, Path(shutil.copy(gpt_image, tmp_path / "c")))
    assert manifest.tracking["full_scan"] is True
    assert manifest.tracking["generation"] == 2
    assert info.stats.new_chunks == 1  # the full scan asked the server what it lacks


@pytest.mark.parametrize(("version", "legacy_name"), [(1, "disk.img_p2.fp"),
                                                      (2, "disk.img_p2.ids")])
def test_an_older_state_is_dropped_for_a_full_scan(
        agent: Agent, gpt_image: Path, tmp_path: Path, version: int, legacy_name: str) -> None:
    """A version 1 state holds HMAC-SHA256 IDs and a scan-fingerprint file per volume:
    its IDs cannot be compared with BLAKE3 ones. A version 2 state named ID files with
    "_" for every other character, so two volumes could share one. Either is discarded,
    and its files are gone once the full scan's point is committed."""
    _point(agent, [str(gpt_image)])
    doc_path = agent.state_dir / agent.host / "state.json"
    doc = json.loads(doc_path.read_text())
    doc_path.write_text(json.dumps(doc | {"version": version}))
    ids_dir = agent.state_dir / agent.host / "ids"
    legacy = ids_dir / legacy_name
    legacy.write_bytes(bytes(4096))
    write_at(gpt_image, 6 * MiB, b"\x5a" * BS)
    info = _point(agent, [str(gpt_image)])
    manifest = assert_point_equals(agent, info.point_id, Path(shutil.copy(gpt_image, tmp_path / "c")))
    assert manifest.tracking["full_scan"] is True and not legacy.exists()
    assert json.loads(doc_path.read_text())["version"] == 3
    assert sorted(p.name for p in ids_dir.iterdir()) == [
        "disk.img%3Aboot.ids", "disk.img%3Ap1.ids", "disk.img%3Ap2.ids"]


def test_state_of_another_point_falls_back_to_a_full_scan(
        agent: Agent, gpt_image: Path, tmp_path: Path) -> None:
    _point(agent, [str(gpt_image)])
    stale = tmp_path / "stale-state"
    shutil.copytree(agent.state_dir, stale)
    write_at(gpt_image, 7 * MiB, b"\x11" * BS)
    _point(agent, [str(gpt_image)])
    # Put back the state of the first point: the server's latest is now another point.
    shutil.rmtree(agent.state_dir)
    shutil.copytree(stale, agent.state_dir)
    write_at(gpt_image, 8 * MiB, b"\x22" * BS)
    info = _point(agent, [str(gpt_image)])
    manifest = assert_point_equals(agent, info.point_id, Path(shutil.copy(gpt_image, tmp_path / "c")))
    assert manifest.tracking["full_scan"] is True
    assert info.stats.new_chunks == 1


def test_loop_device_point_is_byte_for_byte(agent: Agent, loop_device: str,
                                            gpt_image: Path, tmp_path: Path) -> None:
    info = _point(agent, [loop_device])
    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    name = Path(loop_device).name
    assert sorted(v.name for v in manifest.volumes) == [f"{name}:boot", f"{name}:p1", f"{name}:p2"]
    assert_point_equals(agent, info.point_id, gpt_image)


def test_a_chunk_damaged_on_the_server_is_healed_by_the_next_point(
        agent: Agent, cdp_server, gpt_image: Path) -> None:  # type: ignore[no-untyped-def]
    first = _point(agent, [str(gpt_image)])
    with open(gpt_image, "rb") as f:
        f.seek(5 * MiB)
        block = f.read(BS)  # the start of the ext4 partition: non-zero, never rewritten
    chunk_id = agent.codec.keys.chunk_id(block)
    corrupt_chunk(cdp_server, agent.host, chunk_id)
    report = cdp_server.admin().verify()
    assert chunk_id.hex() in report.damaged_chunks
    assert chunk_id in agent.remote.damaged(agent.host)
    damaged = verify_point(agent.remote, agent.host, agent.codec, first.point_id)
    assert (damaged.damaged, damaged.missing) == ([chunk_id.hex()], [])

    # The block did not change, yet the next point uploads it again because it is damaged.
    info = _point(agent, [str(gpt_image)])
    assert (info.stats.changed_bytes, info.stats.new_chunks) == (0, 1)
    assert agent.remote.damaged(agent.host) == []
    assert verify_point(agent.remote, agent.host, agent.codec, first.point_id).ok
    assert verify_point(agent.remote, agent.host, agent.codec, info.point_id).ok


def test_state_files_never_write_the_source(agent: Agent, gpt_image: Path) -> None:
    before = gpt_image.read_bytes()
    mtime = os.stat(gpt_image).st_mtime_ns
    _point(agent, [str(gpt_image)])
    assert gpt_image.read_bytes() == before and os.stat(gpt_image).st_mtime_ns == mtime


def test_the_bandwidth_cap_holds_for_all_workers_together(agent: Agent, tmp_path: Path) -> None:
    """Two workers upload a segment each at the same time; the cap is one shared budget,
    so the point takes at least its bytes over the cap (a cap per worker would halve it)."""
    image = tmp_path / "plain.img"
    image.write_bytes(os.urandom(32 * MiB))  # incompressible: two full segments
    rate = 8 * MiB
    info = backup(agent.remote, agent.host, agent.codec, [str(image)], agent.state_dir,
                  workers=2, options=BackupOptions(bandwidth=rate))
    assert info.stats.new_bytes > 32 * MiB
    assert info.stats.duration >= 0.95 * info.stats.new_bytes / rate
    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    (vol,) = manifest.volumes
    assert b"".join(iter_volume(agent.remote, agent.host, agent.codec, vol)) == image.read_bytes()


def test_every_worker_sends_the_chunks_it_holds_before_the_commit(
        agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Workers keep small batches of new chunks (scattered changes) until they hold a
    request's worth; the flush at the end must reach every worker. A chunk left behind
    would only show as the commit's 409 and a re-upload from the snapshot."""
    monkeypatch.setattr(scan, "SEGMENT_BYTES", 1 * MiB)  # many segments: both workers hold some
    image = tmp_path / "sparse.img"
    data = bytearray(64 * MiB)
    for block in range(0, 64 * MiB // BS, 64):  # one random block per MiB
        data[block * BS:(block + 1) * BS] = os.urandom(BS)
    image.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="cdp.agent.backup"):
        info = backup(agent.remote, agent.host, agent.codec, [str(image)], agent.state_dir,
                      workers=2)
    assert not [r for r in caplog.records if "lacks objects" in r.getMessage()]
    assert info.stats.new_chunks == 64
    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    (vol,) = manifest.volumes
    assert b"".join(iter_volume(agent.remote, agent.host, agent.codec, vol)) == data


class _ParentUploads:
    """The agent's server client, counting the chunk uploads the agent process itself
    makes (the sealing workers' own go through their forked copies of it)."""

    def __init__(self, remote: Remote) -> None:
        self._remote, self._parent = remote, os.getpid()
        self.chunk_uploads = 0

    def upload(self, host: str, kind: ObjectKind, items: list[tuple[bytes, bytes]]) -> Any:
        if os.getpid() == self._parent and kind is ObjectKind.chunks:
            self.chunk_uploads += 1
        return self._remote.upload(host, kind, items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._remote, name)


@pytest.mark.parametrize(("every", "parent_uploads"), [(64, 1), (1, 0)])
def test_workers_upload_a_large_rest_themselves_and_small_rests_go_up_together(
        agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        every: int, parent_uploads: int) -> None:
    """At the end of a point, a worker holding at least FLUSH_OWN_BYTES uploads it
    beside the others; smaller rests are sent by the agent in one request."""
    monkeypatch.setattr(scan, "SEGMENT_BYTES", 1 * MiB)
    image = tmp_path / "data.img"
    data = bytearray(6 * MiB)
    for block in range(0, len(data) // BS, every):  # 6 MiB of data, or one block per MiB
        data[block * BS:(block + 1) * BS] = os.urandom(BS)
    image.write_bytes(data)
    remote = _ParentUploads(agent.remote)
    info = backup(remote, agent.host, agent.codec, [str(image)],  # type: ignore[arg-type]
                  agent.state_dir, workers=2)
    assert remote.chunk_uploads == parent_uploads
    assert info.stats.new_chunks == len(data) // BS // every
    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    (vol,) = manifest.volumes
    assert b"".join(iter_volume(agent.remote, agent.host, agent.codec, vol)) == data


class _FullInWorkers:
    """The agent's server client, except that an upload from any other process (a
    sealing worker) is refused as the server refuses one when its datastore is full."""

    def __init__(self, remote: Remote) -> None:
        self._remote, self._parent = remote, os.getpid()

    def upload(self, host: str, kind: ObjectKind, items: list[tuple[bytes, bytes]]) -> Any:
        if os.getpid() != self._parent:
            raise ServerError("the datastore is full: cannot write 16777216 bytes", 507)
        return self._remote.upload(host, kind, items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._remote, name)


def test_an_upload_refused_in_a_worker_fails_the_point_with_the_servers_words(
        agent: Agent, tmp_path: Path) -> None:
    image = tmp_path / "plain.img"
    image.write_bytes(os.urandom(32 * MiB))  # each worker holds a request's worth itself
    with pytest.raises(ServerError, match="the datastore is full") as err:
        backup(_FullInWorkers(agent.remote), agent.host, agent.codec,  # type: ignore[arg-type]
               [str(image)], agent.state_dir, workers=2,
               options=BackupOptions(retry=RetryPolicy(attempts=2, first_delay=0.05)))
    assert err.value.status == 507
    assert agent.remote.points(agent.host) == []


def test_volumes_whose_names_differ_only_in_punctuation_keep_their_own_ids(
        agent: Agent, tmp_path: Path) -> None:
    """"a+b.img:whole" and "a_b.img:whole" once shared one ID file: the second volume
    compared its blocks with the first one's IDs, and a block changed to the content the
    other volume holds at the same place was taken for unchanged."""
    plus, under = tmp_path / "a+b.img", tmp_path / "a_b.img"
    plus.write_bytes(os.urandom(64 * BS))
    under.write_bytes(os.urandom(64 * BS))
    _point(agent, [str(plus), str(under)])
    write_at(under, 0, plus.read_bytes()[:BS])  # now equal to a+b.img's block 0
    info = _point(agent, [str(plus), str(under)])
    assert (info.stats.new_chunks, info.stats.changed_bytes) == (0, BS)
    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    for vol in manifest.volumes:
        source = plus if vol.name == "a+b.img:whole" else under
        got = b"".join(iter_volume(agent.remote, agent.host, agent.codec, vol))
        assert got == source.read_bytes(), vol.name


def test_a_second_run_for_the_same_host_is_refused_while_one_runs(
        agent: Agent, gpt_image: Path) -> None:
    """The service's point and a manual one at once would patch the same ID files."""
    with StateDir(agent.state_dir, agent.host).lock(), pytest.raises(StateBusy) as err:
        _point(agent, [str(gpt_image)])
    assert str(err.value) == (
        "another cdp-agent run is taking a point of this host (it holds "
        f"{agent.state_dir / agent.host / 'lock'}): wait for it to finish")
    assert agent.remote.points(agent.host) == []
    _point(agent, [str(gpt_image)])  # the lock went with its holder


def test_an_image_whose_name_cannot_be_a_volume_name_is_refused_before_reading(
        agent: Agent, cdp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "my disk.img"
    image.write_bytes(os.urandom(64 * BS))
    with pytest.raises(SourceError) as err:
        _point(agent, [str(image)])
    assert str(err.value) == (
        f"{image}: invalid volume name 'my disk.img:whole': use letters, digits and ._:+/- "
        "(at most 128, no '..'); an image file's name becomes its volumes' names")
    assert object_counts(cdp_server.data_dir, agent.host) == {}  # nothing was sent


def test_a_partition_recreated_elsewhere_is_read_in_full(agent: Agent, gpt_image: Path,
                                                          tmp_path: Path) -> None:
    """Partition 1 recreated at another start, same number and size: the volume
    disk.img:p1 now holds other data. With a change list (as with dm-era) naming only a
    write in it, the blocks it does not name must still be read, not kept from the last
    point."""
    sources = [str(gpt_image)]
    backup(agent.remote, agent.host, agent.codec, sources, agent.state_dir, workers=2)
    write_at(gpt_image, 32 * MiB, os.urandom(4 * MiB))
    runcmd.run(["sfdisk", "-q", "-N", "1", "--no-reread", str(gpt_image)],
               input=b"start=65536, size=8192\n")  # 32 MiB, 4 MiB: was at 1 MiB
    changed = {str(gpt_image): [(0, MiB), (32 * MiB, BS)]}  # the table, one block of p1
    info = backup(agent.remote, agent.host, agent.codec, sources, agent.state_dir,
                  workers=2, changed=changed)
    manifest = assert_point_equals(agent, info.point_id,
                                    Path(shutil.copy(gpt_image, tmp_path / "c")))
    assert manifest.tracking["full_scan"] is True


def test_a_clock_stepped_back_does_not_make_every_point_a_full_scan(
        agent: Agent, gpt_image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Points are ordered by creation time: stamped by a clock stepped back, the new points
    sorted before the last one, which stayed the "latest" the local state was checked
    against (every point a full scan chained to it) and the one a restore of "latest" got."""
    real = time.time
    first = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir,
                   workers=1)
    # The clock ran an hour ahead for that point; NTP steps it back.
    monkeypatch.setattr(backup_module.time, "time", lambda: real() - 3600)
    second = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir,
                    workers=1)
    third = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir,
                   workers=1)
    assert (second.parent, third.parent) == (first.point_id, second.point_id)
    assert third.created > second.created > first.created
    manifest = open_point(agent.remote, agent.host, agent.codec, third.point_id)
    assert manifest.tracking["full_scan"] is False
