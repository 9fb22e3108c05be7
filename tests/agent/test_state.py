"""The local state's protocol against the real CDP server: every save durable (the
directory fsynced after the rename), a full state disk after the commit reported as what
it is, and a damaged state document answered by a full scan."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotcopy.backup import backup
from hotcopy.errors import StateError

from .conftest import Agent, assert_point_equals, write_at
from .images import MiB

BS = 16 * 1024


def test_every_state_save_fsyncs_the_directory_after_the_rename(
        agent: Agent, gpt_image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power cut cannot be made here, so the test records the order of the renames and
    fsyncs in the state directory instead. Without the directory's fsync after the rename
    of state.json, a power cut may lose the rename of the dirty state while ID file pages
    patched after it reach the disk: the next point then trusts the state of the point
    before and leaves out the blocks written since (the review showed such a point,
    silently wrong, by putting the old document back)."""
    host_dir = agent.state_dir / agent.host
    events: list[tuple[str, str]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        events.append(("replace", str(dst)))

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    for _ in range(2):
        backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir,
               workers=2)
    save = [("fsync", str(host_dir / "state.json.tmp")), ("replace", str(host_dir / "state.json")),
            ("fsync", str(host_dir))]
    # Two saves a point: the dirty state before the ID files are patched, then the
    # committed one.
    assert [e for e in events if e[1].startswith(str(host_dir))] == save * 4


def test_a_full_state_disk_after_the_commit_says_the_point_was_committed(
        agent: Agent, gpt_image: Path, small_fs: Callable[[int], Path], tmp_path: Path,
        ) -> None:
    """The server accepts the point, then saving the state that names it fails on a full
    disk: the error must not claim the point was not committed, and the next point,
    finding the dirty state, reads every volume in full."""
    fs = small_fs(4)
    state_dir = fs / "state"
    first = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], state_dir,
                   workers=2)
    write_at(gpt_image, 6 * MiB, b"\x5a" * BS)
    filler = fs / "filler"

    def fill(_: int) -> None:
        # Another process fills the state disk while the point is read; the ID files
        # keep the blocks reserved for them.
        if not filler.exists():
            with open(filler, "wb", buffering=0) as f, pytest.raises(OSError):
                while True:
                    f.write(b"x" * 4096)

    with pytest.raises(StateError) as err:
        backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], state_dir, workers=2,
               progress=fill)
    points = [p.point_id for p in agent.remote.points(agent.host)]
    assert len(points) == 2 and points[0] == first.point_id
    committed = points[1]
    doc = state_dir / agent.host / "state.json"
    assert str(err.value) == (
        f"point {committed} was committed, but the local state was not saved (local state "
        f"disk is full while writing {doc}: free space in the state directory): the next "
        "point reads every volume in full (a full scan)")
    assert err.value.exit_code == 22
    assert json.loads(doc.read_text())["point_id"] is None
    filler.unlink()
    write_at(gpt_image, 7 * MiB, b"\x11" * BS)
    info = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], state_dir,
                  workers=2)
    assert info.parent == committed
    manifest = assert_point_equals(agent, info.point_id,
                                   Path(shutil.copy(gpt_image, tmp_path / "c")))
    assert manifest.tracking["full_scan"] is True


def _no_root(doc: Any) -> Any:
    del next(iter(doc["volumes"].values()))["root"]
    return doc


@pytest.mark.parametrize("damage", [lambda doc: [], _no_root], ids=["list", "volume-no-root"])
def test_a_state_document_of_another_shape_is_logged_and_answered_by_a_full_scan(
        agent: Agent, gpt_image: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        damage: Callable[[Any], Any]) -> None:
    backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir, workers=2)
    doc_path = agent.state_dir / agent.host / "state.json"
    doc_path.write_text(json.dumps(damage(json.loads(doc_path.read_text()))))
    write_at(gpt_image, 6 * MiB, b"\x5a" * BS)
    with caplog.at_level(logging.WARNING, logger="cdp.agent.state"):
        info = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)],
                      agent.state_dir, workers=2)
    assert f"local state {doc_path} is unreadable" in caplog.text
    manifest = assert_point_equals(agent, info.point_id,
                                   Path(shutil.copy(gpt_image, tmp_path / "c")))
    assert manifest.tracking["full_scan"] is True
    # The point's state replaced the damaged one: the next point is incremental again.
    assert json.loads(doc_path.read_text())["point_id"] == info.point_id
