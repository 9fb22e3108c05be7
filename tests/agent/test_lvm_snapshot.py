"""Which leftover LVM snapshots an agent removes, decided from `lvs --reportformat json`
(pure). Taking and removing snapshots runs in the QEMU VM test (tests/agent/test_vm_lvm.py):
this machine's kernel has no device-mapper, so a failed removal is a stand-in command."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cdpcore import runcmd
from hotcopy.snapshot import lvm


def _lvs(*rows: tuple[str, str, str]) -> dict[str, object]:
    return {"report": [{"lv": [{"vg_name": vg, "lv_name": lv, "lv_tags": tags}
                               for vg, lv, tags in rows]}]}


def test_an_agent_removes_its_own_and_untagged_snapshots_but_not_another_agents(
        tmp_path: Path) -> None:
    ours, theirs = lvm.owner_tag(tmp_path / "a" / "web1"), lvm.owner_tag(tmp_path / "b" / "web1")
    assert ours != theirs and ours.startswith("cdp_agent_") and len(ours) == 26
    doc = _lvs(("vg0", "cdpsnap_root", ours),
               ("vg0", "cdpsnap_home", theirs),
               ("vg0", "cdpsnap_srv", ""),  # an agent from before the tags
               ("vg1", "cdpsnap_data", f"backup,{ours}"),
               ("vg0", "root", ours),  # not a snapshot's name: never ours to remove
               ("vg0", "cdpsnap_var", f"{ours},{theirs}"))
    assert lvm.leftovers(doc, ours) == ["vg0/cdpsnap_root", "vg0/cdpsnap_srv",
                                        "vg1/cdpsnap_data"]
    assert lvm.leftovers(doc, theirs) == ["vg0/cdpsnap_home", "vg0/cdpsnap_srv"]


def test_the_tag_follows_the_state_directory_not_the_path_spelled(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "state")
    assert lvm.owner_tag(tmp_path / "link") == lvm.owner_tag(tmp_path / "state")


def test_two_agents_name_their_snapshots_of_one_lv_apart(tmp_path: Path) -> None:
    ours, theirs = lvm.owner_tag(tmp_path / "a"), lvm.owner_tag(tmp_path / "b")
    name = lvm.snapshot_name("root", ours)
    assert name == f"cdpsnap_{ours[len('cdp_agent_'):][:8]}_root"
    assert name != lvm.snapshot_name("root", theirs)
    assert len(lvm.snapshot_name("x" * 127, ours)) == 127  # lvm2 refuses longer names


def test_a_snapshot_that_cannot_be_removed_is_logged_with_lvremoves_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        ) -> None:
    tag = lvm.owner_tag(tmp_path)
    snap = lvm.snapshot_name("root", tag)
    real_run = runcmd.run

    def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        if argv[0] == "lvremove":  # fails as lvremove does on a snapshot still open
            return real_run(["sh", "-c", f"echo '  Logical volume vg0/{snap} in use.' >&2; "
                                         "exit 5"], **kwargs)
        return subprocess.CompletedProcess(list(argv), 0, b"", b"")  # lvcreate

    monkeypatch.setattr(lvm.runcmd, "run", run)
    monkeypatch.setattr(lvm.runcmd, "run_json", lambda argv, **_: {"report": [{"lv": [{
        "vg_name": "vg0", "lv_name": "root", "segtype": "thin", "vg_free_count": "0",
        "lv_attr": "Vwi-a-tz--"}]}]})
    with caplog.at_level(logging.WARNING, logger="cdp.agent.snapshot"), \
            lvm.snapshot("/dev/vg0/root", tag) as (path, _):
        assert path == f"/dev/vg0/{snap}"
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"could not remove snapshot vg0/{snap} of vg0/root: the next "
                              "point of this agent removes it first (command failed (exit 5): ")
    assert warning.endswith(f": Logical volume vg0/{snap} in use.)")
