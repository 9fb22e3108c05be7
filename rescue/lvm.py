"""Recreating LVM volume groups with their original PV, VG and LV UUIDs, from the
vgcfgbackup text captured in the layout (as ReaR does): `pvcreate --uuid
--restorefile`, then `vgcfgrestore` (with --force for thin pools), then activation. A
layout vgcfgrestore cannot rebuild falls back to vgcreate/lvcreate (new VG/LV UUIDs,
same names and sizes). Needs device-mapper: tested inside QEMU VMs.

Every LVM command is limited to the plan's PV devices (`--devices`): a disk outside the
plan that carries the same PV UUIDs (the old disk, still attached) must never be the one
LVM picks. Before anything is written, `foreign_pvs` finds such disks, and the restore
refuses to start while one is attached."""

from __future__ import annotations

import logging
import os
import tempfile

from cdpcore import runcmd
from cdpcore.errors import CommandFailed
from cdpcore.layout import LogicalVolume, VolumeGroup
from cdpcore.units import human

from .discover import whole_disk

log = logging.getLogger("cdp.rescue.lvm")


def _scoped(tool: str, devices: list[str], *args: str) -> list[str]:
    """An LVM command that sees only `devices`."""
    return [tool, "--devices", ",".join(devices), *args]


def _lvm(tool: str, devices: list[str], *args: str) -> None:
    runcmd.run(_scoped(tool, devices, *args))


def foreign_pvs(vgs: dict[str, set[str]], target_disks: set[str]) -> list[str]:
    """PVs on disks other than `target_disks` (kernel names) that belong to a VG being
    restored (`vgs`: name -> its PV UUIDs), by VG name or PV UUID: LVM would see two of
    them once the restore has made its own."""
    uuids = set().union(*vgs.values())
    report = runcmd.run_json(["pvs", "--devicesfile", "", "--reportformat", "json",
                              "-o", "pv_name,pv_uuid,vg_name"])
    return [f"{row['pv_name']} (PV {row['pv_uuid']}"
            + (f" of VG {row['vg_name']})" if row["vg_name"] else ")")
            for row in report["report"][0]["pv"]
            if whole_disk(os.path.basename(os.path.realpath(row["pv_name"])))
            not in target_disks and (row["vg_name"] in vgs or row["pv_uuid"] in uuids)]


def recreate_vg(vg: VolumeGroup, pv_devices: dict[str, str]) -> list[str]:
    """Rebuild `vg` on `pv_devices` (PV UUID -> device) and activate it. Returns notes
    (empty when every UUID was preserved)."""
    devices = list(pv_devices.values())
    with tempfile.NamedTemporaryFile("w", suffix=".vg") as backup:
        backup.write(vg.metadata)
        backup.flush()
        for pv in vg.pvs:
            _lvm("pvcreate", devices, "--force", "--force", "--yes", "--uuid", pv.uuid,
                 "--restorefile", backup.name, pv_devices[pv.uuid])
        thin = any(lv.segtype.startswith("thin") for lv in vg.lvs)
        try:
            _lvm("vgcfgrestore", devices, *(["--force"] if thin else []), "-f", backup.name,
                 vg.name)
        except CommandFailed as exc:
            log.warning("vgcfgrestore failed, recreating %s with new UUIDs: %s", vg.name, exc)
            notes = [f"volume group {vg.name}: vgcfgrestore failed ({exc}); recreated with "
                     "vgcreate/lvcreate: VG and LV UUIDs are new"]
            _create(vg, devices)
        else:
            # Outside the try: a failure here is its own (the VG exists by now, and a
            # vgcreate of its name would only fail again and hide it).
            notes = _recreate_thin(vg, devices) if thin else []
    notes += _grow_pvs(vg, pv_devices)
    _lvm("vgchange", devices, "--activate", "y", vg.name)
    _check_nodes(vg, devices)
    return notes


def _grow_pvs(vg: VolumeGroup, pv_devices: dict[str, str]) -> list[str]:
    """Offer the VG the space of PVs on partitions or disks the restore made larger
    (grow-last, proportional, a larger whole disk): `pvresize` (a no-op for a PV of its
    old size). The LVs keep their sizes: growing them is the sysadmin's choice."""
    notes = []
    devices = list(pv_devices.values())
    for pv in vg.pvs:
        device = pv_devices[pv.uuid]
        _lvm("pvresize", devices, device)
        report = runcmd.run_json(_scoped("pvs", devices, "--reportformat", "json", "--units",
                                         "b", "--nosuffix", "-o", "pv_size", device))
        size = int(report["report"][0]["pv"][0]["pv_size"])
        if size > pv.size:
            notes.append(f"volume group {vg.name}: physical volume {device} grown to "
                         f"{human(size)}, {human(size - pv.size)} more free space in the "
                         "VG (its logical volumes keep their sizes)")
    return notes


def _check_nodes(vg: VolumeGroup, devices: list[str]) -> None:
    """Every LV the restore writes or formats must have its /dev/VG/LV node. vgmknodes
    makes missing ones where udev did not, but exits 5 on a VG with a thin pool (whose
    pool LV has no public node) even after making the others: its status is no verdict,
    the nodes are."""
    runcmd.run(["udevadm", "settle"], check=False)
    runcmd.run(_scoped("vgmknodes", devices, vg.name), check=False)
    missing = [f"/dev/{vg.name}/{lv.name}" for lv in vg.lvs
               if (lv.volume or lv.filesystem) and not os.path.exists(f"/dev/{vg.name}/{lv.name}")]
    if missing:
        raise CommandFailed(["vgmknodes", vg.name], 0, "no device node for "
                            + ", ".join(missing) + " after activating the volume group")


def _recreate_thin(vg: VolumeGroup, devices: list[str]) -> list[str]:
    """vgcfgrestore --force brings back the PV, VG and linear LV UUIDs, but a thin pool's
    own metadata (which thin IDs exist, which blocks they map) lives on its metadata LV,
    not in the VG metadata: the restored pool cannot be activated. So pools (and their
    thin LVs, whose blocks are restored as volumes) are removed and made again."""
    pools = [lv for lv in vg.lvs if lv.segtype == "thin-pool"]
    for pool in pools:
        _lvm("lvremove", devices, "--yes", "--force", "--force", f"{vg.name}/{pool.name}")
    _create_lvs(vg, [lv for lv in vg.lvs if lv.segtype in ("thin-pool", "thin")], devices)
    return [f"volume group {vg.name}: thin pools " + ", ".join(p.name for p in pools)
            + " and their thin LVs were recreated with lvcreate (their LV UUIDs are new; "
            "PV, VG and other LV UUIDs are the original ones)"]


def _create(vg: VolumeGroup, devices: list[str]) -> None:
    _lvm("vgcreate", devices, "--yes", "-s", f"{vg.extent_size}b", vg.name, *devices)
    _create_lvs(vg, vg.lvs, devices)


def _create_lvs(vg: VolumeGroup, lvs: list[LogicalVolume], devices: list[str]) -> None:
    for lv in sorted(lvs, key=lambda lv: lv.segtype != "thin-pool"):
        if lv.segtype == "thin-pool":
            _lvm("lvcreate", devices, "--yes", "--type", "thin-pool", "-L", f"{lv.size}b",
                 "-n", lv.name, vg.name)
        elif lv.segtype == "thin" and lv.pool:
            _lvm("lvcreate", devices, "--yes", "--type", "thin", "-V", f"{lv.size}b",
                 "--thinpool", lv.pool, "-n", lv.name, vg.name)
        else:
            _lvm("lvcreate", devices, "--yes", "-L", f"{lv.size}b", "-n", lv.name, vg.name)
