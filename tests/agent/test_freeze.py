"""What the agent freezes to read a block device, decided from `lsblk --json` (pure), and
the guard that thaws when the agent dies. The freeze itself runs in the QEMU VM test
(tests/agent/test_vm_lvm.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotcopy import thawguard
from hotcopy.errors import SnapshotError
from hotcopy.snapshot import freeze


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


def _guard(monkeypatch: pytest.MonkeyPatch, said: bytes) -> list[list[str]]:
    """Run the guard for a short-lived 'agent' that writes `said` to it, then exits."""
    ran: list[list[str]] = []
    monkeypatch.setattr(thawguard.runcmd, "run", lambda argv, **_: ran.append(list(argv)))
    r, w = os.pipe()
    agent = subprocess.Popen([sys.executable, "-c",
                              f"import os, time; os.write({w}, {said!r}); time.sleep(0.3)"],
                             pass_fds=(w,))
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": pipe})())
        old = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)}
        try:
            thawguard.guard(agent.pid, ["/boot", "/srv"])
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    agent.wait()
    return ran


def test_the_guard_thaws_when_the_agent_dies_without_thawing(monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    assert _guard(monkeypatch, b"") == [["fsfreeze", "--unfreeze", "/boot"],
                                        ["fsfreeze", "--unfreeze", "/srv"]]


def test_the_guard_leaves_alone_what_the_agent_thawed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _guard(monkeypatch, b"thawed\n") == []
