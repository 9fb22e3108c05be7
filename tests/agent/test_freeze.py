"""What the agent freezes to read a block device, decided from `lsblk --json` (pure), the
guard that thaws when the agent dies or the freeze outlasts max_freeze, and real freezes
of an ext4 mounted from a loop device (the agent's whole path, with a partition of a
disk, runs in the QEMU VM test tests/agent/test_vm_lvm.py)."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdpcore import runcmd
from hotcopy import thawguard
from hotcopy.errors import SnapshotError
from hotcopy.snapshot import freeze
from tests.loopdev import mounted_loop


def _dev(name: str, type_: str, *mounts: str, children: list[dict[str, Any]] | None = None,
         ) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "path": f"/dev/{name}", "type": type_,
                           "mountpoints": list(mounts) or [None]}
    if children:
        doc["children"] = children
    return doc


def _disk(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"blockdevices": [_dev("vda", "disk", children=list(parts))]}


def test_a_whole_disk_freezes_its_mounted_partitions_but_not_the_lvs_of_its_pv() -> None:
    # The drill's server: BIOS boot, an unmounted ESP, /boot, and a PV whose LVs hold /
    # and /data (through a dm-era device).
    doc = _disk(_dev("vda1", "part"), _dev("vda2", "part"), _dev("vda3", "part", "/boot"),
                _dev("vda4", "part", children=[
                    _dev("drillvg-root", "lvm", "/"),
                    _dev("drillvg-data", "lvm", children=[_dev("cdpera-data", "dm", "/data")]),
                ]))
    assert freeze.mounted_filesystems(doc) == ["/boot"]


def test_every_mounted_partition_is_frozen_once_whatever_its_bind_mounts() -> None:
    doc = _disk(_dev("vda1", "part", "/srv", "/var/www"), _dev("vda2", "part", "[SWAP]"),
                _dev("vda3", "part", "/home"))
    assert freeze.mounted_filesystems(doc) == ["/srv", "/home"]


def test_filesystems_on_devices_a_partition_holds_are_frozen() -> None:
    doc = _disk(_dev("vda1", "part", children=[_dev("luks-home", "crypt", "/home")]),
                _dev("vda2", "part", children=[_dev("md0", "raid1", "/srv")]))
    assert freeze.mounted_filesystems(doc) == ["/home", "/srv"]


def test_a_partition_or_an_unused_disk() -> None:
    assert freeze.mounted_filesystems({"blockdevices": [_dev("vda3", "part", "/boot")]}) == [
        "/boot"]
    assert freeze.mounted_filesystems(_disk(_dev("vda1", "part"))) == []
    assert freeze.mounted_filesystems({"blockdevices": [_dev("vdb", "disk")]}) == []


def test_an_lv_about_to_be_snapshotted_freezes_only_what_its_holders_mount() -> None:
    """lvcreate freezes a filesystem mounted on the LV itself, not one mounted on a device
    stacked over it (dm-era, dm-crypt): that one the agent freezes. The root filesystem is
    left out (its snapshot is crash-consistent), not refused."""
    def lv(*children: dict[str, Any], mount: str | None = None) -> dict[str, Any]:
        return {"blockdevices": [_dev("vg0-data", "lvm", *([mount] if mount else []),
                                      children=list(children))]}

    assert freeze.mounted_filesystems(lv(_dev("cdpera-data", "dm", "/data")),
                                      holders_only=True) == ["/data"]
    assert freeze.mounted_filesystems(lv(mount="/srv"), holders_only=True) == []
    assert freeze.mounted_filesystems(lv(_dev("luks-root", "crypt", "/")),
                                      holders_only=True) == []
    assert freeze.mounted_filesystems(lv(_dev("luks-srv", "crypt", "/srv", "/var/www")),
                                      holders_only=True) == ["/srv"]


def test_the_root_filesystem_on_a_partition_is_refused() -> None:
    doc = _disk(_dev("vda1", "part", "/boot"), _dev("vda2", "part", "/"))
    with pytest.raises(SnapshotError, match="/dev/vda2 holds the root filesystem"):
        freeze.mounted_filesystems(doc)


def test_a_leftover_marker_thaws_every_filesystem_it_names(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(freeze.runcmd, "run", lambda argv, **_: ran.append(list(argv)))
    (tmp_path / freeze.MARKER).write_text("/boot\n/srv\n")
    freeze.thaw_leftover(tmp_path)
    assert ran == [["fsfreeze", "--unfreeze", "/boot"], ["fsfreeze", "--unfreeze", "/srv"]]
    assert not (tmp_path / freeze.MARKER).exists()


def _guard(monkeypatch: pytest.MonkeyPatch, said: bytes, lives: float = 0.3,
           max_seconds: float = 0) -> tuple[list[list[str]], bytes]:
    """Run the guard for an 'agent' that writes `said` to it, then exits after `lives`
    seconds; returns the commands the guard ran and what it printed."""
    ran: list[list[str]] = []
    monkeypatch.setattr(thawguard.runcmd, "run", lambda argv, **_: ran.append(list(argv)))
    r, w = os.pipe()
    agent = subprocess.Popen([sys.executable, "-c",
                              f"import os, time; os.write({w}, {said!r}); time.sleep({lives})"],
                             pass_fds=(w,))
    os.close(w)
    printed = io.BytesIO()
    with os.fdopen(r, "rb") as pipe:
        monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": pipe})())
        monkeypatch.setattr(sys, "stdout", type("Stdout", (), {"buffer": printed})())
        old = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)}
        try:
            thawguard.guard(agent.pid, max_seconds, ["/boot", "/srv"])
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    agent.kill()
    agent.wait()
    return ran, printed.getvalue()


THAWS = [["fsfreeze", "--unfreeze", "/boot"], ["fsfreeze", "--unfreeze", "/srv"]]


def test_the_guard_thaws_when_the_agent_dies_without_thawing(monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    assert _guard(monkeypatch, b"") == (THAWS, b"")


def test_the_guard_leaves_alone_what_the_agent_thawed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _guard(monkeypatch, b"thawed\n") == ([], b"")
    assert _guard(monkeypatch, b"thawed\n", max_seconds=5) == ([], b"")


def test_the_guard_thaws_a_freeze_that_outlasts_max_freeze_and_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _guard(monkeypatch, b"", lives=30, max_seconds=0.5) == (THAWS, b"expired\n")


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An ext4 mounted from a loop device: (device, mountpoint)."""
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted_loop(image, mnt, mkfs=["mkfs.ext4", "-q"]) as dev:
        yield dev, mnt


def _writer(mnt: Path) -> threading.Thread:
    """A thread writing a file to the filesystem: it waits while the filesystem is frozen."""
    def write() -> None:
        with open(mnt / "written", "wb") as f:
            f.write(b"x" * 4096)
            os.fsync(f.fileno())

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_freeze_holds_writers_until_it_ends(mounted: tuple[str, Path], tmp_path: Path,
                                              ) -> None:
    dev, mnt = mounted
    with freeze.frozen(dev, tmp_path, max_seconds=60):
        writer = _writer(mnt)
        writer.join(1.0)
        assert writer.is_alive()  # frozen: the write waits
        assert (tmp_path / freeze.MARKER).read_text() == f"{mnt}\n"
    writer.join(10)
    assert not writer.is_alive() and (mnt / "written").stat().st_size == 4096
    assert not (tmp_path / freeze.MARKER).exists()


def test_a_freeze_longer_than_max_freeze_is_ended_by_the_guard_and_fails(
        mounted: tuple[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dev, mnt = mounted
    with pytest.raises(SnapshotError) as err, freeze.frozen(dev, tmp_path, max_seconds=1), \
            caplog.at_level(logging.WARNING, logger="cdp.agent.snapshot"):
        writer = _writer(mnt)
        writer.join(15)  # the guard thaws after 1 s, while the agent is still "reading"
        assert not writer.is_alive()
    assert str(err.value) == (
        f"{mnt} stayed frozen longer than max_freeze (1 s) while {dev} was read: the "
        "guard thawed them and the point is not committed; put the filesystem on LVM, or "
        "raise max_freeze")
    assert not (tmp_path / freeze.MARKER).exists()
    assert "could not thaw" not in caplog.text  # the guard thawed it: no failure


def test_a_filesystem_that_cannot_be_thawed_is_named_with_fsfreezes_error(
        mounted: tuple[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A killed run's marker names a mountpoint that is gone and one still frozen: the
    first failure is logged with fsfreeze's own words, and the second is still thawed."""
    _, mnt = mounted
    gone = tmp_path / "gone"
    runcmd.run(["fsfreeze", "--freeze", str(mnt)])
    (tmp_path / freeze.MARKER).write_text(f"{gone}\n{mnt}\n")
    with caplog.at_level(logging.WARNING, logger="cdp.agent.snapshot"):
        freeze.thaw_leftover(tmp_path)
    writer = _writer(mnt)
    writer.join(10)
    assert not writer.is_alive()
    failures = [r.getMessage() for r in caplog.records if "could not thaw" in r.getMessage()]
    assert failures == [
        f"could not thaw {gone}: its writers wait until it is thawed (command failed (exit 1): "
        f"fsfreeze --unfreeze {gone}: fsfreeze: cannot open {gone}: No such file or "
        "directory)"]
    # Thawed already (the guard thaws when a killed agent dies): not a failure.
    caplog.clear()
    (tmp_path / freeze.MARKER).write_text(f"{mnt}\n")
    with caplog.at_level(logging.WARNING, logger="cdp.agent.snapshot"):
        freeze.thaw_leftover(tmp_path)
    assert "could not thaw" not in caplog.text
