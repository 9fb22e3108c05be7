"""LVM in the layout: PVs, VGs and LVs with their UUIDs from the lvm2 tools' JSON reports
(`--reportformat json`; the lvm2app binding is gone since LVM2 2.03), and each VG's
`vgcfgbackup` text, which the rescue engine restores with pvcreate --restorefile and
vgcfgrestore. Each LV that holds data becomes a volume `lvm:<vg>/<lv>`."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from cdpcore import runcmd
from cdpcore.layout import Layout, LogicalVolume, PhysicalVolume, VolumeGroup

from .capture import VolumeSpec, fstype, probe_fs

log = logging.getLogger("cdp.agent.capture")

_UNITS = ["--units", "b", "--nosuffix", "--reportformat", "json"]
#: LV types whose bytes are not a volume: pools hold other LVs' data, and their hidden
#: sub-LVs are not addressable.
_NOT_COPIED = {"thin-pool", "cache-pool", "vdo-pool"}
#: The agents' own snapshot LVs (hotcopy.snapshot.lvm), left out of the layout: also a
#: thin one that a killed run or another agent left (LVM reports thick ones as snapshots).
SNAPSHOT_PREFIX = "cdpsnap_"


def _report(tool: str, fields: str, key: str) -> list[dict[str, Any]]:
    doc = runcmd.run_json([tool, *_UNITS, "-o", fields])
    rows: list[dict[str, Any]] = doc["report"][0][key]
    return rows


def parent_disk(device: str) -> str:
    """Kernel name of the disk holding `device` (itself for a whole disk)."""
    name = Path(os.path.realpath(device)).name
    sys = Path(f"/sys/class/block/{name}")
    if (sys / "partition").exists():
        return Path(os.path.realpath(sys)).parent.name
    return name


def capture_lvm(layout: Layout) -> list[VolumeSpec]:
    """Add the VGs whose PVs lie on the layout's disks; return their LVs' volumes."""
    disks = {d.name for d in layout.disks}
    every_pv = [pv for pv in _report("pvs", "pv_name,pv_uuid,vg_name,pv_size,pe_start", "pv")
                if pv["vg_name"]]
    pvs = [pv for pv in every_pv if parent_disk(pv["pv_name"]) in disks]
    wanted = sorted({pv["vg_name"] for pv in pvs})
    for pv in every_pv:
        if pv["vg_name"] in wanted and pv not in pvs:
            # Its LVs are still copied whole (read through the VG), but the layout holds
            # the group without this PV: vgcfgrestore cannot rebuild it as it was.
            log.warning("volume group %s has physical volume %s on %s, which is not a "
                        "source: a restore cannot rebuild the group as it was", pv["vg_name"],
                        pv["pv_name"], parent_disk(pv["pv_name"]))
    vgs = {vg["vg_name"]: vg for vg in _report("vgs", "vg_name,vg_uuid,vg_extent_size", "vg")}
    lvs = _report("lvs", "vg_name,lv_name,lv_uuid,lv_size,segtype,pool_lv,lv_path,lv_attr", "lv")
    volumes: list[VolumeSpec] = []
    for name in wanted:
        vg = VolumeGroup(name=name, uuid=vgs[name]["vg_uuid"],
                         extent_size=int(vgs[name]["vg_extent_size"]), metadata=_backup(name))
        vg.pvs = [PhysicalVolume(uuid=pv["pv_uuid"], device=Path(os.path.realpath(pv["pv_name"])).name,
                                 size=int(pv["pv_size"]), pe_start=int(pv["pe_start"]))
                  for pv in pvs if pv["vg_name"] == name]
        seen: set[str] = set()
        for row in lvs:
            # Hidden LVs ([name]) and snapshots (the agents' own, thin ones too) are not
            # volumes of their own, nor LVs a restore should make. segtype is a segment
            # field: lvs reports a row per segment, and an LV of several segments is
            # recorded once, with its first segment's type.
            if (row["vg_name"] != name or row["lv_name"].startswith(("[", SNAPSHOT_PREFIX))
                    or row["lv_attr"][:1] in "sS" or row["lv_uuid"] in seen):
                continue
            seen.add(row["lv_uuid"])
            lv = LogicalVolume(name=row["lv_name"], uuid=row["lv_uuid"], size=int(row["lv_size"]),
                               segtype=row["segtype"], pool=row["pool_lv"] or None)
            if row["segtype"] not in _NOT_COPIED and row["lv_path"]:
                lv.filesystem = probe_fs(row["lv_path"], 0, lv.size)
                if lv.filesystem is None or lv.filesystem.type != "swap":
                    lv.volume = f"lvm:{name}/{lv.name}"
                    volumes.append(VolumeSpec(lv.volume, row["lv_path"], 0, lv.size,
                                              fstype(lv.filesystem)))
            vg.lvs.append(lv)
        layout.volume_groups.append(vg)
    return volumes


def _backup(vg: str) -> str:
    with tempfile.TemporaryDirectory(prefix="cdp-vgcfg-") as tmp:
        out = Path(tmp) / f"{vg}.vg"
        runcmd.run(["vgcfgbackup", "-f", str(out), vg])
        return out.read_text()
