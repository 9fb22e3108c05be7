"""What a point does once its blocks are read: a freeze ends before the index pages and the
commit (which may wait for a server that is down), and a commit that the server answers
with 409 (objects it lost meanwhile) re-sends them from the views, checking each block
against its chunk ID, since a thawed device or a plain image file has moved on."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdpcore.api import ObjectKind, PointInfo
from cdpcore.client import ServerPages
from cdpcore.errors import ServerError
from cdpcore.format import ZERO_ID
from cdpcore.index import decode_page
from hotcopy import backup as backup_module
from hotcopy import snapshot
from hotcopy.backup import BackupOptions, backup
from hotcopy.remote import Remote
from hotcopy.verify import verify_point
from tests.server.stored import corrupt_object

from .conftest import Agent, assert_point_equals, corrupt_chunk, write_at
from .images import MiB

BS = 16 * 1024
#: The start of the image's ext4 partition: non-zero, and unchanged by the tests' writes.
EXT4_START = 5 * MiB


class _Watched:
    """The agent's server client, calling `before_commit` before each commit and noting
    the index page uploads and commits in `events`."""

    def __init__(self, remote: Remote, events: list[str]) -> None:
        self._remote, self.events = remote, events
        self.before_commit: list[Any] = []

    def upload(self, host: str, kind: ObjectKind, items: list[tuple[bytes, bytes]]) -> Any:
        if kind is ObjectKind.pages:
            self.events.append("pages")
        return self._remote.upload(host, kind, items)

    def commit(self, host: str, request: Any) -> PointInfo:
        self.events.append("commit")
        if self.before_commit:
            self.before_commit.pop(0)()
        return self._remote.commit(host, request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._remote, name)


def _point(agent: Agent, remote: Any, sources: list[str]) -> PointInfo:
    # reflink=False: the view of an image file is the file itself, as on a filesystem
    # without reflinks, so the file can change between the read and the commit.
    return backup(remote, agent.host, agent.codec, sources, agent.state_dir, workers=2,
                  options=BackupOptions(reflink=False))


def _assert_point_is(agent: Agent, info: PointInfo, image: Path) -> None:
    assert_point_equals(agent, info.point_id, image)
    assert verify_point(agent.remote, agent.host, agent.codec, info.point_id).ok


def test_a_freeze_ends_once_its_device_is_read(
        agent: Agent, loop_device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        ) -> None:
    """Before the next source's reads, the index and the commit (which may wait for a
    server that is down). The agent reads loop devices as they are, without a freeze, and
    this machine has no other device to mount: the loop device is taken for a plain disk,
    and the freeze is a stand-in that notes when it begins and ends (real freezes run in
    tests/agent/test_freeze.py and tests/agent/test_vm_lvm.py)."""
    events: list[str] = []

    @contextlib.contextmanager
    def frozen(device: str, state_dir: Path, max_seconds: float = 0) -> Iterator[None]:
        events.append(f"freeze {device}")
        yield
        events.append(f"thaw {device}")

    def scan_volume(view: snapshot.ReadView, *args: Any, **kwargs: Any) -> Any:
        events.append(f"scan {view.path}")
        return real_scan(view, *args, **kwargs)

    real_kind, real_scan = snapshot.kind_of, backup_module.scan_volume
    monkeypatch.setattr(snapshot, "kind_of", lambda path, lvs: (
        "device" if path == loop_device else real_kind(path, lvs)))
    monkeypatch.setattr(snapshot.freeze, "frozen", frozen)
    monkeypatch.setattr(backup_module, "scan_volume", scan_volume)
    second = tmp_path / "second.img"
    second.write_bytes(os.urandom(MiB))
    info = _point(agent, _Watched(agent.remote, events), [loop_device, str(second)])
    disk_scans = [e for e in events if e == f"scan {loop_device}"]
    assert len(disk_scans) >= 2  # the boot area and the partitions
    assert events == ([f"freeze {loop_device}", *disk_scans, f"thaw {loop_device}",
                       f"scan {second}"] + ["pages"] * (len(events) - len(disk_scans) - 4)
                      + ["commit"])
    assert info.stats.new_chunks > 0


def _lose_chunk_then(agent: Agent, cdp_server: Any, image: Path,
                     change: bytes | None) -> tuple[_Watched, list[str]]:
    """A client whose first commit finds a chunk of the point damaged on the server (bit
    rot that verify finds between the read and the commit; the chunk is one the last
    point holds too), after `change` (if given) was written over its block in the image."""
    with open(image, "rb") as f:
        f.seek(EXT4_START)
        chunk_id = agent.codec.keys.chunk_id(f.read(BS))

    def lose() -> None:
        if change is not None:
            write_at(image, EXT4_START, change)
        corrupt_chunk(cdp_server, agent.host, chunk_id)
        assert chunk_id.hex() in cdp_server.admin().verify().damaged_chunks

    events: list[str] = []
    watched = _Watched(agent.remote, events)
    watched.before_commit.append(lose)
    return watched, events


def test_a_chunk_lost_before_the_commit_is_sent_again_from_the_view(
        agent: Agent, cdp_server: Any, gpt_image: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    _point(agent, agent.remote, [str(gpt_image)])
    write_at(gpt_image, 9 * MiB, b"\x07" * BS)
    watched, events = _lose_chunk_then(agent, cdp_server, gpt_image, None)
    with caplog.at_level(logging.WARNING, logger="cdp.agent.backup"):
        info = _point(agent, watched, [str(gpt_image)])
    assert events.count("commit") == 2
    assert "server lacks objects of the point; uploading them again" in caplog.text
    _assert_point_is(agent, info, gpt_image)
    assert agent.remote.damaged(agent.host) == []


def test_a_lost_chunk_whose_block_changed_since_the_read_fails_the_point_clearly(
        agent: Agent, cdp_server: Any, gpt_image: Path) -> None:
    """The block cannot be sent again as it was: the point is not committed (never one
    with a block of another moment), and the next point is exact."""
    first = _point(agent, agent.remote, [str(gpt_image)])
    write_at(gpt_image, 9 * MiB, b"\x07" * BS)  # the second point has a change of its own
    watched, events = _lose_chunk_then(agent, cdp_server, gpt_image, b"\x09" * BS)
    with pytest.raises(ServerError) as err:
        _point(agent, watched, [str(gpt_image)])
    assert err.value.status == 409
    assert str(err.value) == (
        f"the server lacks 1 chunks of this point whose blocks changed on {gpt_image} "
        "since the point read them; the point is not committed, and the next one reads "
        "its volumes in full and sends what the server lacks")
    assert events.count("commit") == 1
    assert [p.point_id for p in agent.remote.points(agent.host)] == [first.point_id]

    again = _point(agent, agent.remote, [str(gpt_image)])
    _assert_point_is(agent, again, gpt_image)


def test_a_lost_chunk_is_sent_from_a_copy_that_did_not_change(
        agent: Agent, cdp_server: Any, gpt_image: Path) -> None:
    """Two blocks hold the chunk; the first changed after the read, the second did not:
    the second is sent and the point commits, as it was when read."""
    with open(gpt_image, "rb") as f:
        f.seek(EXT4_START)
        block = f.read(BS)
    write_at(gpt_image, 20 * MiB, block)  # later in the same volume
    _point(agent, agent.remote, [str(gpt_image)])
    write_at(gpt_image, 9 * MiB, b"\x07" * BS)
    watched, events = _lose_chunk_then(agent, cdp_server, gpt_image, b"\x09" * BS)
    as_read = gpt_image.read_bytes()[:EXT4_START] + block + gpt_image.read_bytes()[EXT4_START + BS:]
    info = _point(agent, watched, [str(gpt_image)])
    assert events.count("commit") == 2
    expected = gpt_image.parent / "as-read.img"
    expected.write_bytes(as_read)
    _assert_point_is(agent, info, expected)


def test_a_damaged_index_of_the_last_point_is_sent_again_level_by_level(
        agent: Agent, cdp_server: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The server's verify found the last point's index pages damaged down a whole path
    (the pages of a point go to the server together, into one pack: a damaged pack takes
    them all), and the next point shares them (its volume did not change). A 409 names
    only the topmost damaged page of a subtree (the server does not read below it), so
    each commit uncovers one level more: the root, the level-1 page, the leaves, then the
    commit succeeds. The agent gave up after three commits, before the last of them."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(512 * MiB)  # 4 KiB blocks: a root of level 2, each child 256 MiB
    for offset in (MiB, 2 * MiB, 100 * MiB, 300 * MiB):
        write_at(image, offset, os.urandom(4096))

    def take(remote: Any) -> PointInfo:
        return backup(remote, agent.host, agent.codec, [str(image)], agent.state_dir,
                      block_size=4096, workers=2, options=BackupOptions(reflink=False))

    first = take(agent.remote)
    root = bytes.fromhex(agent.remote.point(agent.host, first.point_id).volumes[0].root)
    pages = ServerPages(agent.remote, agent.host)  # type: ignore[arg-type]

    def entries(pid: bytes) -> list[bytes]:
        data = decode_page(pages.get_pages([pid])[pid], pid).entries
        return [e for i in range(0, len(data), 32) if (e := bytes(data[i:i + 32])) != ZERO_ID]

    level1 = entries(root)[0]
    leaves = entries(level1)
    assert len(leaves) == 3
    for page in (root, level1, *leaves):
        corrupt_object(cdp_server.data_dir, "pages", page, keep_checksum=False)
    assert cdp_server.admin().verify().damaged_points == [first.point_id]
    events: list[str] = []
    with caplog.at_level(logging.WARNING, logger="cdp.agent.backup"):
        info = take(_Watched(agent.remote, events))
    assert events.count("commit") == 4
    assert caplog.text.count("server lacks objects of the point; uploading them again") == 3
    _assert_point_is(agent, info, image)
    assert cdp_server.admin().verify().damaged_points == []  # the pages sent again
