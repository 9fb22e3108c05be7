"""LVM in the layout, from the lvm2 tools' JSON reports (device-mapper does not work
here: the reports are ones the tools gave for a VG made with --driverloaded n)."""

from __future__ import annotations

from typing import Any

import pytest

from cdpcore.layout import Disk, Filesystem, Layout
from hotcopy import lvmcapture

PV = {"pv_name": "/dev/loop0", "pv_uuid": "d0emk8-fZmd-j08T-InR4-7xrV-LwSK-pmvFOo",
      "vg_name": "rvtestvg", "pv_size": "62914560", "pe_start": "1048576"}
VG = {"vg_name": "rvtestvg", "vg_uuid": "LjzALc-tvIb-IAm2-QU42-vzAg-uvZ1-nViaIA",
      "vg_extent_size": "4194304"}
LV_A = {"vg_name": "rvtestvg", "lv_name": "a", "lv_uuid": "lffpjp-XpRY-YESb-5TOK-knn2-7kbj-PS73Wk",
        "lv_size": "16777216", "segtype": "linear", "pool_lv": "", "lv_path": "/dev/rvtestvg/a",
        "lv_attr": "-wi-XX----"}
LV_B = {"vg_name": "rvtestvg", "lv_name": "b", "lv_uuid": "rYDu4y-MMYW-x7wa-qG3e-OQ4h-Vrtk-IROChw",
        "lv_size": "8388608", "segtype": "linear", "pool_lv": "", "lv_path": "/dev/rvtestvg/b",
        "lv_attr": "-wi-XX----"}


def _fake_lvm(monkeypatch: pytest.MonkeyPatch, lvs: list[dict[str, Any]]) -> None:
    reports = {"pvs": [PV], "vgs": [VG], "lvs": lvs}
    monkeypatch.setattr(lvmcapture, "_report", lambda tool, fields, key: reports[tool])
    monkeypatch.setattr(lvmcapture, "_backup", lambda vg: f"# {vg}\n")
    monkeypatch.setattr(lvmcapture, "parent_disk", lambda device: "loop0")
    monkeypatch.setattr(lvmcapture, "probe_fs", lambda path, offset, size: Filesystem("ext4"))


def test_an_lv_of_two_segments_is_one_lv_and_one_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    """`lvs -o segtype` reports a row per segment (segtype is a segment field): an LV
    extended into space not next to it (lvextend after another LV) came twice, as two
    LVs of one name and two volumes `lvm:rvtestvg/a`. This is what lvs printed for
    rvtestvg/a made 8 MiB, then rvtestvg/b, then a extended to 16 MiB."""
    _fake_lvm(monkeypatch, [LV_A, LV_A, LV_B])
    layout = Layout(hostname="web1", disks=[Disk(name="loop0", size=64 << 20)])
    volumes = lvmcapture.capture_lvm(layout)
    (vg,) = layout.volume_groups
    assert [(lv.name, lv.size, lv.volume) for lv in vg.lvs] == [
        ("a", 16777216, "lvm:rvtestvg/a"), ("b", 8388608, "lvm:rvtestvg/b")]
    assert [(v.name, v.path, v.size) for v in volumes] == [
        ("lvm:rvtestvg/a", "/dev/rvtestvg/a", 16777216),
        ("lvm:rvtestvg/b", "/dev/rvtestvg/b", 8388608)]


def test_a_vg_with_a_pv_outside_the_sources_is_captured_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """rvtestvg extended onto /dev/loop1, a disk the agent does not protect: the layout
    used to hold the group with loop0's PV alone, without a word. Its LVs are still
    copied (read through the VG); the agent says the group cannot be rebuilt as it was."""
    pv2 = {**PV, "pv_name": "/dev/loop1", "pv_uuid": "Xb0p3c-Wq2R-aaaa-bbbb-cccc-dddd-eeeeee"}
    _fake_lvm(monkeypatch, [LV_A, LV_B])
    monkeypatch.setattr(lvmcapture, "_report",
                        lambda tool, fields, key: {"pvs": [PV, pv2], "vgs": [VG],
                                                   "lvs": [LV_A, LV_B]}[tool])
    monkeypatch.setattr(lvmcapture, "parent_disk", lambda device: device.rsplit("/", 1)[1])
    layout = Layout(hostname="web1", disks=[Disk(name="loop0", size=64 << 20)])
    volumes = lvmcapture.capture_lvm(layout)
    assert [pv.device for pv in layout.volume_groups[0].pvs] == ["loop0"]
    assert [v.name for v in volumes] == ["lvm:rvtestvg/a", "lvm:rvtestvg/b"]
    assert "volume group rvtestvg has physical volume /dev/loop1 on loop1, which is not a " \
        "source: a restore cannot rebuild the group as it was" in caplog.text
