"""Restores of hosts with several disks, and the rule that a restore never writes a disk
it was not told to: a loop device is another path to its backing file or device, so two
loop devices over one file are one disk, and a disk that a loop device reads and writes
(or that backs a mounted one) is in use. Every target is checked before anything is
written anywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cdpcore.errors import SafetyError
from rescue import growfs, target
from rescue.discover import describe_target
from rescue.engine import Engine, ExecuteOptions
from rescue.repo import Repository
from tests.loopdev import attached_loop

from .conftest import MIB, PASS
from .pointmaker import make_point
from .test_other_disk import _ext4_source
from .test_post import mounted
from .test_restore import (
    check_equal,
    digest,
    make_source,
    partitions,
    restore_argv,
    sh,
    started,
)
from .test_resume import BLOCK, LEAF, Interrupt, interrupted, resume

pytest.importorskip("parted")


def two_disk_point(repo_host: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    """A point of host web1 with two source disks: vda.img (GPT, partitions) and vdb.img
    (a whole-disk volume of random bytes)."""
    vda, vdb = tmp_path / "vda.img", tmp_path / "vdb.img"
    make_source(vda, "gpt", 32 * MIB)
    vdb.write_bytes(os.urandom(16 * MIB))
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(vda), str(vdb)])
    return vda, vdb


#: A mount that writes nothing on the device: not even a journal replay.
READ_ONLY = "ro,noload"


def stale(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))  # what a restore must not leave, nor touch unasked
    return path


def test_two_loop_devices_over_one_file_are_refused_as_targets(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """Two loop devices over one image file are one disk under two names: mapping a
    source disk onto each would write both onto the same bytes."""
    two_disk_point(repo_host, tmp_path)
    backing = stale(tmp_path / "t.img", 64 * MIB)
    before = digest(backing)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with attached_loop(backing) as first, attached_loop(backing) as second:
        assert describe_target(first).busy == [
            f"{first}: its backing file {backing} is also attached to {second}"]
        with pytest.raises(SafetyError) as err:
            engine.plan("latest", {"vda.img": first, "vdb.img": second})
        assert str(err.value) == (f"refusing target {first} for source disk vda.img: "
                                  f"{first}: its backing file {backing} is also attached to "
                                  f"{second}")
    assert digest(backing) == before


def test_a_loop_device_over_a_target_disk_is_refused(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """A loop device whose backing is another target disk (losetup over /dev/sdb, or over
    one of its partitions) writes that disk: the kernel records no holder for it and the
    disk opens exclusively, but it is not free."""
    two_disk_point(repo_host, tmp_path)
    backing = stale(tmp_path / "t.img", 64 * MIB)
    before = digest(backing)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with attached_loop(backing) as disk, attached_loop(Path(disk)) as over:
        assert describe_target(disk).busy == [f"{disk} is the backing device of {over}"]
        with pytest.raises(SafetyError) as err:
            engine.plan("latest", {"vda.img": disk, "vdb.img": over})
        assert str(err.value) == (f"refusing target {disk} for source disk vda.img: {disk} "
                                  f"is the backing device of {over}")
    assert digest(backing) == before


def test_a_disk_mounted_through_a_loop_device_is_refused_and_no_target_written(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """Planned while free; before the restore runs, the second target's filesystem is
    mounted through a loop device over it. The check before the first write refuses it,
    and neither target, the first included, gets a byte."""
    two_disk_point(repo_host, tmp_path)
    first = stale(tmp_path / "first.img", 32 * MIB)
    backing = tmp_path / "second.img"
    backing.write_bytes(bytes(16 * MIB))
    sh("mkfs.ext4", "-q", "-F", str(backing))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with attached_loop(backing) as disk:
        plan = engine.plan("latest", {"vda.img": str(first), "vdb.img": disk})
        before = digest(first), digest(backing)
        with attached_loop(Path(disk)) as over, mounted(over, tmp_path / "mnt", READ_ONLY):
            with pytest.raises(SafetyError) as err:
                engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
            assert str(err.value) == (f"refusing to write {disk}: {disk} is the backing "
                                      f"device of {over}")
            # and the loop device itself, over a mounted disk, is no target either
            assert describe_target(over).busy == [f"{over} is mounted on {tmp_path / 'mnt'}"]
        assert (digest(first), digest(backing)) == before


def test_a_loop_device_over_a_mounted_disk_is_refused(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """Writing a loop device writes its backing disk: one over a mounted disk is busy."""
    two_disk_point(repo_host, tmp_path)
    backing = tmp_path / "second.img"
    backing.write_bytes(bytes(16 * MIB))
    sh("mkfs.ext4", "-q", "-F", str(backing))
    first = stale(tmp_path / "first.img", 32 * MIB)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with attached_loop(backing) as disk, mounted(disk, tmp_path / "mnt", READ_ONLY) as mnt, \
            attached_loop(Path(disk)) as over:
        before = digest(first), digest(backing)
        reason = f"{over}: its backing device {disk} is mounted on {mnt}"
        assert describe_target(over).busy == [reason]
        with pytest.raises(SafetyError) as err:
            engine.plan("latest", {"vda.img": str(first), "vdb.img": over})
        assert str(err.value) == f"refusing target {over} for source disk vdb.img: {reason}"
        assert (digest(first), digest(backing)) == before


def test_a_hard_link_to_a_file_attached_to_a_loop_device_is_refused(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """An image file attached to a loop device is busy under any of its names."""
    two_disk_point(repo_host, tmp_path)
    backing = stale(tmp_path / "t.img", 32 * MIB)
    link = tmp_path / "link.img"
    os.link(backing, link)
    other = stale(tmp_path / "other.img", 16 * MIB)
    before = digest(backing), digest(other)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with attached_loop(backing) as dev:
        assert describe_target(str(link)).busy == [f"{link} is attached to {dev}"]
        with pytest.raises(SafetyError) as err:
            engine.plan("latest", {"vda.img": str(link), "vdb.img": str(other)})
        assert str(err.value) == (f"refusing target {link} for source disk vda.img: {link} "
                                  f"is attached to {dev}")
    assert (digest(backing), digest(other)) == before


def test_two_disks_onto_two_loop_devices_restore_byte_exact(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """The --map given in the other order than the point's disks: each source onto its own
    target, byte for byte, and a third loop device that was not named is not touched."""
    vda, vdb = two_disk_point(repo_host, tmp_path)
    ta, tb = stale(tmp_path / "ta.img", 32 * MIB), stale(tmp_path / "tb.img", 16 * MIB)
    bystander = stale(tmp_path / "c.img", 32 * MIB)
    spare = digest(bystander)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with attached_loop(ta) as a, attached_loop(tb) as b, attached_loop(bystander):
        plan = engine.plan("latest", {"vdb.img": b, "vda.img": a}, verify="read-back")
        assert [(dp.source, dp.target.path) for dp in plan.disks] == \
            [("vda.img", a), ("vdb.img", b)]
        report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
        assert report.ok, report.errors
        assert {act["device"] for act in report.actions} == {a, b}
        sh("losetup", "-c", a)
        os.sync()
    check_equal(vda, ta)
    assert sh("sfdisk", "--dump", str(ta)).replace(str(ta), "X") == \
        sh("sfdisk", "--dump", str(vda)).replace(str(vda), "X")
    assert digest(tb) == digest(vdb)
    assert digest(bystander) == spare


def multidisk_argv(cdp_server: Any, repo_host: dict[str, Any], tmp_path: Path,
                   maps: list[str]) -> list[str]:
    """A restore with its state in tmp_path/st and a checkpoint every MiB."""
    return restore_argv(cdp_server, repo_host, tmp_path, maps, "--state-dir",
                        str(tmp_path / "st"), "--checkpoint-mib", "1")


def big_two_disk_point(repo_host: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    """As two_disk_point, with a second disk large enough to be caught half-way."""
    vda, vdb = tmp_path / "vda.img", tmp_path / "vdb.img"
    make_source(vda, "gpt", 32 * MIB)
    vdb.write_bytes(os.urandom(128 * MIB))
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(vda), str(vdb)],
               block_size=4096)
    return vda, vdb


def test_a_target_another_restore_is_writing_is_refused(
        repo_host: dict[str, Any], cdp_server: Any, tmp_path: Path) -> None:
    """While one restore writes vdb onto tb.img, a second one (its state elsewhere) mapping
    vdb onto tb.img too is refused before it writes anything: not tb.img, and not ta2.img,
    its other target. The first one ends byte-exact."""
    vda, vdb = big_two_disk_point(repo_host, tmp_path)
    ta, tb = stale(tmp_path / "ta.img", 32 * MIB), stale(tmp_path / "tb.img", 128 * MIB)
    ta2 = stale(tmp_path / "ta2.img", 32 * MIB)
    spare = digest(ta2)
    argv = multidisk_argv(cdp_server, repo_host, tmp_path, [f"vda.img={ta}", f"vdb.img={tb}"])
    first = started(argv, tmp_path / "st", "vdb.img:whole")
    try:
        engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
        plan = engine.plan("latest", {"vda.img": str(ta2), "vdb.img": str(tb)})
        with pytest.raises(SafetyError) as err:
            engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "other")))
        assert str(err.value) == (f"refusing to write {tb}: another restore is writing it "
                                  "now: wait for it to end, or stop it")
        assert not (tmp_path / "other").exists()
    finally:
        assert first.wait(timeout=300) == 0
    assert digest(ta2) == spare
    assert digest(tb) == digest(vdb)
    check_equal(vda, ta)


def test_a_restore_killed_in_its_second_disk_resumes_with_the_maps_in_another_order(
        repo_host: dict[str, Any], cdp_server: Any, tmp_path: Path) -> None:
    """kill -9 half-way through the second disk; the same restore with its --map options
    in the other order is the same restore: it resumes there, and both targets end byte
    for byte equal to their sources. A third image file is never touched."""
    vda, vdb = big_two_disk_point(repo_host, tmp_path)
    ta, tb = stale(tmp_path / "ta.img", 32 * MIB), stale(tmp_path / "tb.img", 128 * MIB)
    bystander = stale(tmp_path / "c.img", 16 * MIB)
    spare = digest(bystander)
    first = started(multidisk_argv(cdp_server, repo_host, tmp_path,
                                 [f"vda.img={ta}", f"vdb.img={tb}"]),
                    tmp_path / "st", "vdb.img:whole")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    saved = json.loads(next((tmp_path / "st").glob("rescue-web1-*.state.json")).read_text())
    done = saved["volume_blocks"]["vdb.img:whole"]
    assert 0 < done < 128 * MIB // 4096
    again = subprocess.run(multidisk_argv(cdp_server, repo_host, tmp_path,
                                        [f"vdb.img={tb}", f"vda.img={ta}"]),
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr
    report = json.loads(next((tmp_path / "st").glob("rescue-web1-*.report.json")).read_text())
    assert [v["resumed"] for v in report["volumes"] if v["volume"] == "vdb.img:whole"] == \
        [done * 4096]
    assert digest(tb) == digest(vdb)
    check_equal(vda, ta)
    assert sh("sfdisk", "--dump", str(ta)).replace(str(ta), "X") == \
        sh("sfdisk", "--dump", str(vda)).replace(str(vda), "X")
    assert digest(bystander) == spare


def test_a_restore_killed_in_its_second_disk_then_given_another_target_starts_over(
        repo_host: dict[str, Any], cdp_server: Any, tmp_path: Path) -> None:
    """Resumed with another target for the second disk, the restore is another restore:
    it starts over on both (the first disk's finished steps are not skipped onto the
    new plan's), the new target gets vdb byte for byte, the abandoned one is not
    written again."""
    vda, vdb = big_two_disk_point(repo_host, tmp_path)
    ta, tb = stale(tmp_path / "ta.img", 32 * MIB), stale(tmp_path / "tb.img", 128 * MIB)
    tc = stale(tmp_path / "tc.img", 128 * MIB)
    first = started(multidisk_argv(cdp_server, repo_host, tmp_path,
                                 [f"vda.img={ta}", f"vdb.img={tb}"]),
                    tmp_path / "st", "vdb.img:whole")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    abandoned = digest(tb)
    again = subprocess.run(multidisk_argv(cdp_server, repo_host, tmp_path,
                                        [f"vdb.img={tc}", f"vda.img={ta}"]),
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr
    assert "resuming from" not in again.stderr
    report = json.loads(next((tmp_path / "st").glob("rescue-web1-*.report.json")).read_text())
    assert all(v["resumed"] == 0 for v in report["volumes"])
    assert digest(tc) == digest(vdb)
    check_equal(vda, ta)
    assert digest(tb) == abandoned


def test_a_loop_device_another_restore_holds_is_refused_and_the_other_target_untouched(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """A block device is locked by its device number, whatever node names it: while
    another restore holds it, a restore onto it and an image file writes neither."""
    two_disk_point(repo_host, tmp_path)
    first = stale(tmp_path / "first.img", 32 * MIB)
    backing = stale(tmp_path / "second.img", 16 * MIB)
    before = digest(first), digest(backing)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with attached_loop(backing) as dev:
        plan = engine.plan("latest", {"vda.img": str(first), "vdb.img": dev})
        alias = tmp_path / "alias"
        alias.symlink_to(dev)
        with target.locked([str(alias)]), pytest.raises(SafetyError) as err:
            engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
        assert str(err.value) == (f"refusing to write {dev}: another restore is writing it "
                                  "now: wait for it to end, or stop it")
        assert (digest(first), digest(backing)) == before
        report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
        assert report.ok, report.errors


def test_a_finished_disk_written_again_before_the_resume_is_not_skipped(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """Interrupted in its second disk; before the resume, a partition the first disk had
    finished is made a filesystem (or mounted, or wiped: what goes to its first blocks).
    The state vouched only for each disk's head and each volume's last synced block, so
    the resume skipped that volume and said ok with the new filesystem in it."""
    vda, vdb = tmp_path / "vda.img", tmp_path / "vdb.img"
    make_source(vda, "gpt", 32 * MIB)
    vdb.write_bytes(os.urandom(6 * LEAF * BLOCK))
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(vda), str(vdb)])
    ta, tb = stale(tmp_path / "ta.img", 32 * MIB), stale(tmp_path / "tb.img", 24 * MIB)
    state = tmp_path / "st"
    eng = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = eng.plan("latest", {"vda.img": str(ta), "vdb.img": str(tb)})
    saved = interrupted(eng, plan, state, after=2 * LEAF * BLOCK, volume="vdb.img:whole")
    assert "stream:vda.img:p3" in saved["done_actions"]
    p3 = partitions(vda)[2]
    start, size = p3["start"] * 512, p3["size"] * 512
    with attached_loop(ta, "-o", str(start), "--sizelimit", str(size)) as dev:
        sh("mkfs.ext4", "-q", "-F", "-E", "nodiscard", dev)
    report, notes = resume(eng, eng.plan("latest", {"vdb.img": str(tb), "vda.img": str(ta)}),
                           state)
    assert report.ok, report.errors
    check_equal(vda, ta)
    assert digest(tb) == digest(vdb)
    note = next(n for n in notes if n.startswith("resume state "))
    assert f"{ta} no longer holds what the interrupted restore wrote (bytes {start}-" in note
    assert note.endswith(": the restore starts over")


def test_a_restore_stopped_after_growing_a_filesystem_still_resumes(
        repo_host: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first-block marks are not taken once only the steps that rewrite restored
    filesystems on purpose are left: a restore stopped after growing one (its superblock
    rewritten) resumes at that step instead of writing every target again."""
    source, _ = _ext4_source(tmp_path, lambda fs: None)
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(source)])
    target, state = tmp_path / "big.img", tmp_path / "st"
    sh("truncate", "-s", str(96 * MIB), str(target))
    eng = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = eng.plan("latest", {"vda.img": str(target)}, resize="grow-last")
    real = growfs.grow

    def grown_then_stopped(*args: Any) -> list[str]:
        real(*args)
        raise Interrupt

    monkeypatch.setattr(growfs, "grow", grown_then_stopped)
    with pytest.raises(Interrupt):
        eng.execute(plan, ExecuteOptions(state_dir=str(state)))
    monkeypatch.setattr(growfs, "grow", real)
    report, notes = resume(eng, plan, state)
    assert report.ok, report.errors
    done = len(plan.actions) - 1
    assert len(notes) == 1 and notes[0].startswith("resuming from ")
    assert notes[0].endswith(f": {done} actions already done")
    assert [a["status"] for a in report.actions] == ["done earlier"] * done + ["done"]
