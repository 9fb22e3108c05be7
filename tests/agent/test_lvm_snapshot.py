"""Which leftover LVM snapshots an agent removes, decided from `lvs --reportformat json`
(pure). Taking and removing snapshots runs in the QEMU VM test (tests/agent/test_vm_lvm.py):
this machine's kernel has no device-mapper."""

from __future__ import annotations

from pathlib import Path

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
