"""Reflink copies of image files and their leftovers: each copy's name carries its agent's
owner tag, and the start-up cleanup removes only its own agent's copies (and untagged
ones of older agents), never the live copy of another agent backing up another image of
the same directory. Real reflinks on an XFS mounted from a loop device."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdpcore.api import Role
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import new_master_key
from hotcopy import snapshot
from hotcopy.backup import backup
from hotcopy.capture import VolumeSpec
from hotcopy.snapshot import image, lvm
from tests.loopdev import mounted_loop

from .conftest import Agent, assert_point_equals
from .images import MiB


def test_the_cleanup_removes_its_own_and_untagged_copies_but_not_another_agents(
        tmp_path: Path) -> None:
    ours, theirs = lvm.owner_tag(tmp_path / "a" / "web1"), lvm.owner_tag(tmp_path / "b" / "db1")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("vm-a.img", f".cdpsnap-{ours}-vm-a.img-4343",
                 f".cdpsnap-{theirs}-vm-b.img-4242",
                 ".cdpsnap-vm-c.img-4444"):  # an agent from before the tags
        (images / name).write_bytes(b"x")
    snapshot.cleanup_leftovers([VolumeSpec("vm-a.img:whole", str(images / "vm-a.img"), 0, 1)],
                               tmp_path / "a" / "web1")
    assert sorted(p.name for p in images.iterdir()) == [f".cdpsnap-{theirs}-vm-b.img-4242",
                                                        "vm-a.img"]


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """An XFS (reflink copies) mounted from a loop device."""
    backing = tmp_path / "xfs.img"
    with open(backing, "wb") as f:
        f.truncate(320 * MiB)  # mkfs.xfs refuses filesystems under 300 MB
    mnt = tmp_path / "xfs"
    mnt.mkdir()
    with mounted_loop(backing, mnt, mkfs=["mkfs.xfs", "-q", "-m", "reflink=1"]):
        yield mnt


def test_another_agent_starting_leaves_a_running_agents_copy_alone(
        agent: Agent, cdp_server, xfs: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two agents (two state directories, two hosts) protect two VM images of one
    directory; the second starts while the first reads its copy."""
    a_img, b_img = xfs / "vm-a.img", xfs / "vm-b.img"
    for path in (a_img, b_img):
        path.write_bytes(os.urandom(4 * MiB))
    host_b = f"h{uuid.uuid4().hex[:10]}"
    other = Agent(cdp_server.client(cdp_server.add_host(host_b)[Role.agent]), host_b,
                  BlobCodec(KeySet.from_master(new_master_key())), tmp_path / "state-b", "")
    seen: list[list[str]] = []

    def start_b(_: int) -> None:
        if not seen:
            seen.append(sorted(p.name for p in xfs.glob(".cdpsnap-*")))
            b = backup(other.remote, other.host, other.codec, [str(b_img)], other.state_dir,
                       workers=1)
            assert_point_equals(other, b.point_id, Path(shutil.copy(b_img, tmp_path / "b")))

    a = backup(agent.remote, agent.host, agent.codec, [str(a_img)], agent.state_dir,
               workers=1, progress=start_b)
    tag = lvm.owner_tag(agent.state_dir / agent.host)
    assert seen == [[f"{image.PREFIX}{tag}-vm-a.img-{os.getpid()}"]]
    assert_point_equals(agent, a.point_id, Path(shutil.copy(a_img, tmp_path / "a")))
    assert not list(xfs.glob(".cdpsnap-*"))


def test_an_image_with_a_long_name_gets_a_copy_named_within_the_limit(xfs: Path) -> None:
    """A file name of 250 bytes (the limit is 255) still gets its reflink copy: the copy's
    name keeps the name's start and a hash of all of it, and the cleanup finds it."""
    tag = lvm.owner_tag(xfs / "state" / "web1")
    source = xfs / ("vm-" + "é" * 119 + "-disk.img")  # é is 2 bytes: 250 bytes in all
    assert len(os.fsencode(source.name)) == 250
    source.write_bytes(os.urandom(MiB))
    with image.snapshot(str(source), tag) as view:
        copy = Path(view)
        assert copy != source and copy.read_bytes() == source.read_bytes()
        assert len(os.fsencode(copy.name)) == image.NAME_MAX
        assert copy.name.startswith(f"{image.PREFIX}{tag}-vm-é")
        assert copy.name.endswith(f"-{os.getpid()}")
        assert image.leftovers(xfs, tag) == [copy]
    assert not list(xfs.glob(".cdpsnap-*"))


def test_ctrl_c_while_the_copy_is_made_leaves_no_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C lands while cp makes the copy (seen in `cdp-agent run`'s SIGINT test): cp
    has created the file when the KeyboardInterrupt reaches the agent. Stands in for cp:
    creating the file and raising there, as the interrupted subprocess.run does."""
    src = tmp_path / "disk.img"
    src.write_bytes(b"data")

    def interrupted_cp(argv: list[str], **_: object) -> None:
        Path(argv[-1]).write_bytes(b"da")
        raise KeyboardInterrupt

    monkeypatch.setattr(image.runcmd, "run", interrupted_cp)
    with pytest.raises(KeyboardInterrupt), image.snapshot(str(src), "cdp_agent_0"):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["disk.img"]


def test_a_ctrl_c_while_cp_runs_waits_for_it_and_leaves_no_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ctrl-C comes from the real cp's side (a shell that signals the agent, then
    copies): it is held back until cp has ended, then arrives, and no copy is left. Cut
    short, cp was killed but not waited for, and could create the copy after the agent
    had removed it (`cdp-agent run`'s SIGINT test found one about one run in eight on a
    loaded machine); nor did the copy's removal always run before the interrupt."""
    src, done = tmp_path / "disk.img", tmp_path / "cp-ended"
    src.write_bytes(b"data")
    real_run = image.runcmd.run

    def cp_interrupted_from_outside(argv: list[str], **kwargs: Any) -> Any:
        script = f'kill -INT {os.getpid()}; sleep 0.5; "$@"; status=$?; touch {done}; ' \
                 'exit $status'
        return real_run(["sh", "-c", script, "sh", *argv], **kwargs)

    monkeypatch.setattr(image.runcmd, "run", cp_interrupted_from_outside)
    # A thread besides the main one, as the agent has (the client's watcher, the
    # workers' pool): the kernel hands it the SIGINT the main thread blocks, and Python
    # runs the handler in the main thread all the same.
    other = threading.Event()
    threading.Thread(target=other.wait, daemon=True).start()
    # Ctrl-C as in a terminal: under `nohup make test &` the tests inherit it ignored.
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), image.snapshot(str(src), "cdp_agent_0"):
            pass
    finally:
        other.set()
        signal.signal(signal.SIGINT, ignored)
    assert done.exists()  # cp ran to its end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp-ended", "disk.img"]
