"""Resuming an interrupted restore, against a real server process: what a resume reads
of the point's index, and what it takes on trust from its state file about the target."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cdpcore.api import ObjectKind
from cdpcore.index import decode_page
from rescue.engine import Engine, Event, ExecuteOptions
from rescue.repo import Repository
from rescue.stream import StreamOptions
from tests.loopdev import attached_loop
from tests.server.stored import corrupt_object, remove_object

from .conftest import MIB, PASS
from .pointmaker import make_point
from .test_restore import check_equal, make_source, sh

BLOCK = 16384
LEAF = 256  # blocks per leaf page (fanout)


class Interrupt(KeyboardInterrupt):
    """Ctrl-C, delivered where the test chooses."""


def interrupted(eng: Engine, plan: Any, state: Path, after: int,
                volume: str | None = None) -> dict[str, Any]:
    """Run `plan` and interrupt it once `after` bytes of a volume (`volume`, or any) have
    landed: batches of one leaf (4 MiB) on one worker, so the checkpoint is exactly the
    batches seen. Returns the state file it leaves."""
    def sink(event: Event) -> None:
        if event.kind == "progress" and event.done >= after and (
                volume is None or (event.action and event.action.volume) == volume):
            raise Interrupt

    opts = ExecuteOptions(state_dir=str(state), stream=StreamOptions(
        workers=1, batch_bytes=LEAF * BLOCK, checkpoint_bytes=LEAF * BLOCK))
    with pytest.raises(Interrupt):
        eng.execute(plan, opts, sink)
    return dict(json.loads(next(state.glob("rescue-web1-*.state.json")).read_text()))


def resume(eng: Engine, plan: Any, state: Path) -> tuple[Any, list[str]]:
    notes: list[str] = []
    report = eng.execute(plan, ExecuteOptions(state_dir=str(state), stream=StreamOptions(
        workers=1)), lambda e: notes.append(e.message) if e.kind == "note" else None)
    return report, notes


def _whole_disk_restore(repo_host: dict[str, Any], tmp_path: Path
                        ) -> tuple[Path, Path, Path, Engine, Any]:
    """A point of a 24 MiB image of random data (a whole-disk volume: 6 leaves) and the
    plan of its restore onto an empty image: (source, target, state dir, engine, plan)."""
    source, target, state = tmp_path / "vda.img", tmp_path / "new.img", tmp_path / "st"
    source.write_bytes(os.urandom(6 * LEAF * BLOCK))
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(source)])
    sh("truncate", "-s", str(6 * LEAF * BLOCK), str(target))
    eng = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    return source, target, state, eng, eng.plan("latest", {"vda.img": str(target)})


@pytest.mark.parametrize("how", ["damaged", "forged", "missing"])
def test_a_resume_reads_no_index_page_wholly_before_its_checkpoint(
        repo_host: dict[str, Any], tmp_path: Path, how: str) -> None:
    """The leaves of the blocks a first run wrote and synced go bad on the server before
    the resume. The resume needs none of them, and read them all from block 0 before
    skipping their blocks: it stopped the volume at its checkpoint, 'index missing or
    damaged'. damaged: the server notices (checksum); forged: only the client's SHA-256
    check does; missing: the server lost the page."""
    source, target, state, eng, plan = _whole_disk_restore(repo_host, tmp_path)
    saved = interrupted(eng, plan, state, after=2 * LEAF * BLOCK)
    assert saved["volume_blocks"] == {"vda.img:whole": 2 * LEAF}
    vol = plan.volumes[0]
    root = decode_page(repo_host["restore"].fetch("web1", ObjectKind.pages,
                                                  [vol.root_id])[vol.root_id])
    data_dir = repo_host["server"].data_dir
    # Leaves 0 and 1: blocks 0-511, the last ending exactly at the checkpoint.
    for leaf in (root.entry(0), root.entry(1)):
        if how == "missing":
            remove_object(data_dir, "pages", leaf)
            continue
        corrupt_object(data_dir, "pages", leaf, keep_checksum=how == "forged")
    report, notes = resume(eng, plan, state)
    assert report.ok and not report.errors
    assert any(n.startswith("resuming from ") for n in notes)
    assert target.read_bytes() == source.read_bytes()
    assert [(v.resumed, v.written, v.error) for v in report.volumes] == \
        [(2 * LEAF * BLOCK, 4 * LEAF * BLOCK, None)]
    assert not list(state.glob("rescue-web1-*.state.json"))


def _recreate(target: Path) -> None:
    """Someone makes the image file again between the runs: same path, same size, empty."""
    size = target.stat().st_size
    target.unlink()
    sh("truncate", "-s", str(size), str(target))


def _zero(target: Path) -> None:
    """Someone zeroes the target in place between the runs (same file, same inode)."""
    sh("dd", "if=/dev/zero", f"of={target}", "bs=1M", "conv=notrunc,fsync", "status=none",
       f"count={target.stat().st_size // MIB}")


@pytest.mark.parametrize("change", [_recreate, _zero], ids=["recreated", "zeroed"])
def test_a_state_is_not_applied_to_a_whole_disk_target_changed_since(
        repo_host: dict[str, Any], tmp_path: Path, change: Any) -> None:
    """The state named its targets by path (and size and serial, which an image file, a
    loop device or a re-used disk keep): a target emptied between the runs got the
    resume's skip of the wipe and of its written prefix, and the restore said ok with
    8 MiB of zeros where the data belongs. The resume must see that its target no longer
    holds what the first run wrote, and start over."""
    source, target, state, eng, plan = _whole_disk_restore(repo_host, tmp_path)
    assert interrupted(eng, plan, state, after=2 * LEAF * BLOCK)["volume_blocks"] == \
        {"vda.img:whole": 2 * LEAF}
    inode = target.stat().st_ino
    change(target)
    again = eng.plan("latest", {"vda.img": str(target)})  # the same command, run again
    assert again.fingerprint() == plan.fingerprint()
    report, notes = resume(eng, again, state)
    assert target.read_bytes() == source.read_bytes()
    stale = next(n for n in notes if n.startswith("resume state "))
    assert stale.endswith(": the restore starts over")
    # A file made again may get the old one's inode back (tmpfs and ext4 reuse them):
    # then only its contents tell it apart.
    why = ("no longer holds what the interrupted restore wrote (bytes 0-65535 changed "
           "since)" if target.stat().st_ino == inode else
           "is not the disk or file the interrupted restore wrote (file ")
    assert f"{target} {why}" in stale
    assert not any(n.startswith("resuming from ") for n in notes)
    assert report.ok and [v.resumed for v in report.volumes] == [0]


def test_a_state_is_not_applied_to_another_disk_under_the_same_name(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """Between the runs the device name goes to another disk of the same size, without a
    serial (a loop device attached to another file; a disk swapped in the same port):
    the resume skipped the wipe and the written prefix, leaving the other disk's old
    bytes there, and said ok."""
    source, state = tmp_path / "vda.img", tmp_path / "st"
    first, other = tmp_path / "first.img", tmp_path / "other.img"
    source.write_bytes(os.urandom(6 * LEAF * BLOCK))
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(source)])
    first.write_bytes(os.urandom(6 * LEAF * BLOCK))  # stale contents
    other.write_bytes(os.urandom(6 * LEAF * BLOCK))
    eng = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with attached_loop(first) as dev:
        plan = eng.plan("latest", {"vda.img": dev})
        interrupted(eng, plan, state, after=2 * LEAF * BLOCK)
        sh("losetup", "-d", dev)
        sh("losetup", dev, str(other))  # the same name, another disk
        again = eng.plan("latest", {"vda.img": dev})
        assert again.fingerprint() == plan.fingerprint()
        report, notes = resume(eng, again, state)
        sh("losetup", "-c", dev)
    os.sync()
    assert other.read_bytes() == source.read_bytes()
    stale = next(n for n in notes if n.startswith("resume state "))
    assert f"{dev} is not the disk or file the interrupted restore wrote" in stale
    assert stale.endswith(": the restore starts over")
    assert report.ok and [v.resumed for v in report.volumes] == [0]


def test_a_state_is_not_applied_to_a_target_partitioned_again_since(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """The target gets another partition table between the runs: the resume skipped the
    wipe, the table and the finished partitions, and left that other table in place."""
    source, target, state = tmp_path / "vda.img", tmp_path / "new.img", tmp_path / "st"
    make_source(source, "gpt")
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(source)])
    sh("truncate", "-s", str(64 * MIB), str(target))
    eng = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = eng.plan("latest", {"vda.img": str(target)})
    saved = interrupted(eng, plan, state, after=2 * LEAF * BLOCK, volume="vda.img:p3")
    assert saved["volume_blocks"]["vda.img:p3"] == 2 * LEAF
    assert "table:vda.img" in saved["done_actions"]
    sh("sgdisk", "--zap-all", str(target))
    sh("sgdisk", "-n1:2048:+20M", "-t1:8300", str(target))
    report, notes = resume(eng, eng.plan("latest", {"vda.img": str(target)}), state)
    check_equal(source, target)
    stale = next(n for n in notes if n.startswith("resume state "))
    assert f"{target} no longer holds what the interrupted restore wrote" in stale
    assert report.ok and {v.resumed for v in report.volumes} == {0}


def test_a_state_that_does_not_record_its_targets_is_not_resumed(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """A state written before states recorded their targets (or stripped of it) cannot
    be checked against them: it is not resumed. And one that is intact is, from its
    checkpoint (the same run without the stripping)."""
    source, target, state, eng, plan = _whole_disk_restore(repo_host, tmp_path)
    saved = interrupted(eng, plan, state, after=2 * LEAF * BLOCK)
    assert set(saved["identities"]) == {str(target)}
    assert [m[:3] for m in saved["marks"]] == [
        [str(target), 0, 64 * 1024], [str(target), (2 * LEAF - 1) * BLOCK, BLOCK]]
    path = next(state.glob("rescue-web1-*.state.json"))
    path.write_text(json.dumps({k: v for k, v in saved.items()
                                if k not in ("identities", "marks")}))
    report, notes = resume(eng, plan, state)
    assert notes == [f"resume state {path} does not fit the targets: it does not record "
                     "what its targets held (an earlier version wrote it): the restore "
                     "starts over"]
    assert target.read_bytes() == source.read_bytes()
    assert report.ok and [v.resumed for v in report.volumes] == [0]
