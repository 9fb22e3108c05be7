"""Restore safety: the engine refuses the rescue medium, a mounted disk, a file in use by
a loop device, a disk not in the plan, a disk swapped after planning and a too-small
target, before writing a byte; a dry run leaves every disk byte-identical."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdpcore import runcmd
from cdpcore.api import Role
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.errors import SafetyError
from cdpcore.keys import new_master_key, recovery_key
from hotcopy.backup import backup
from rescue.engine import Engine, ExecuteOptions
from rescue.repo import Repository
from tests.loopdev import attached_loop

from .conftest import record

MIB = 1024 * 1024


def digest(path: Path | str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.fixture
def engine(cdp_server: Any, tmp_path: Path) -> Engine:
    tokens = cdp_server.add_host("safe")
    master = new_master_key()
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(8 * MIB))
    backup(cdp_server.client(tokens[Role.agent]), "safe",
           BlobCodec(KeySet.from_master(master)), [str(image)], tmp_path / "state")
    client = cdp_server.client(tokens[Role.restore])
    return Engine(Repository.open(client, "safe", recovery_key(master)))


def blank(path: Path, size: int = 8 * MIB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[str]:
    with attached_loop(blank(tmp_path / "loop.img")) as dev:
        yield dev


def quiet_ext4(dev: str) -> None:
    """ext4 without lazy init: once mounted it writes nothing to the disk by itself while
    a test checks that nothing else did (ext4lazyinit would zero inode tables then)."""
    runcmd.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev])


def refused(engine: Engine, target: str, tmp_path: Path) -> str:
    before = digest(target)
    with pytest.raises(SafetyError) as exc:
        plan = engine.plan("latest", {"disk.img": target})
        engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path)))
    assert digest(target) == before, "a refused target was written"
    return str(exc.value)


def test_refuses_a_mounted_disk(engine: Engine, loop: str, tmp_path: Path) -> None:
    quiet_ext4(loop)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    runcmd.run(["mount", loop, str(mnt)])
    try:
        message = refused(engine, loop, tmp_path)
    finally:
        runcmd.run(["umount", str(mnt)], check=False)
    assert f"{loop} is mounted on {mnt}" in message
    record("restore_safety", case="mounted disk", message=message)


def test_refuses_the_rescue_medium(engine: Engine, loop: str, tmp_path: Path) -> None:
    quiet_ext4(loop)
    medium = Path("/media/rescue")
    created = not medium.exists()
    medium.mkdir(parents=True, exist_ok=True)
    runcmd.run(["mount", "-o", "ro", loop, str(medium)])
    try:
        message = refused(engine, loop, tmp_path)
    finally:
        runcmd.run(["umount", str(medium)], check=False)
        if created:
            medium.rmdir()
    assert f"{loop} holds the rescue medium" in message
    record("restore_safety", case="rescue medium", message=message)


def test_refuses_an_image_file_in_use_by_a_loop_device(engine: Engine, tmp_path: Path) -> None:
    target = blank(tmp_path / "busy.img")
    with attached_loop(target) as dev:
        message = refused(engine, str(target), tmp_path)
    assert f"is attached to {dev}" in message
    record("restore_safety", case="file behind a loop device", message=message)


def test_refuses_a_too_small_target(engine: Engine, tmp_path: Path) -> None:
    target = blank(tmp_path / "small.img", 4 * MIB)
    message = refused(engine, str(target), tmp_path)
    assert "is too small for source disk disk.img" in message
    record("restore_safety", case="too small", message=message)


def test_refuses_a_disk_not_in_the_plan_and_a_swapped_disk(engine: Engine,
                                                          tmp_path: Path) -> None:
    target = blank(tmp_path / "target.img")
    stranger = blank(tmp_path / "stranger.img")
    with open(stranger, "r+b") as f:
        f.write(b"precious data of another disk")
    plan = engine.plan("latest", {"disk.img": str(target)})
    written = [a for a in plan.actions if a.target == os.path.abspath(target)]
    assert written
    written[0].target = str(stranger)  # a plan edited (or corrupted) after review
    before = digest(stranger), digest(target)
    with pytest.raises(SafetyError, match="which is not a target disk of the plan"):
        engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path)))
    assert (digest(stranger), digest(target)) == before
    # the planned file replaced by a bigger disk between plan and execute
    plan = engine.plan("latest", {"disk.img": str(target)})
    os.truncate(target, 16 * MIB)
    with pytest.raises(SafetyError, match="is not the disk the plan was made for"):
        engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path)))
    assert not any(target.read_bytes())
    record("restore_safety", case="not in plan / swapped", message="refused")


def test_dry_run_leaves_every_disk_byte_identical(engine: Engine, loop: str,
                                                  tmp_path: Path) -> None:
    target = blank(tmp_path / "target.img")
    with open(target, "r+b") as f:
        f.write(os.urandom(MIB))
    disks = [str(target), loop, str(tmp_path / "disk.img")]
    before = [digest(d) for d in disks]
    plan = engine.plan("latest", {"disk.img": str(target)})
    report = engine.execute(plan, ExecuteOptions(dry_run=True, state_dir=str(tmp_path)))
    assert report.dry_run
    assert [digest(d) for d in disks] == before
    out = subprocess.run(["losetup", "-j", str(target)], capture_output=True, text=True)
    assert out.stdout == ""  # nothing attached the target behind our back
