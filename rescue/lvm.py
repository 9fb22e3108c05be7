"""Recreating LVM volume groups with their original PV, VG and LV UUIDs, from the
vgcfgbackup text captured in the layout (as ReaR does): `pvcreate --uuid
--restorefile`, then `vgcfgrestore` (with --force for thin pools), then activation. A
layout vgcfgrestore cannot rebuild falls back to vgcreate/lvcreate (new VG/LV UUIDs,
same names and sizes). Needs device-mapper: tested inside QEMU VMs."""

from __future__ import annotations

import logging
import os
import tempfile

from cdpcore import runcmd
from cdpcore.errors import CommandFailed
from cdpcore.layout import LogicalVolume, VolumeGroup

log = logging.getLogger("cdp.rescue.lvm")


def recreate_vg(vg: VolumeGroup, pv_devices: dict[str, str]) -> list[str]:
    """Rebuild `vg` on `pv_devices` (PV UUID -> device) and activate it. Returns notes
    (empty when every UUID was preserved)."""
    with tempfile.NamedTemporaryFile("w", suffix=".vg") as backup:
        backup.write(vg.metadata)
        backup.flush()
        for pv in vg.pvs:
            runcmd.run(["pvcreate", "--force", "--force", "--yes", "--uuid", pv.uuid,
                        "--restorefile", backup.name, pv_devices[pv.uuid]])
        thin = any(lv.segtype.startswith("thin") for lv in vg.lvs)
        try:
            runcmd.run(["vgcfgrestore", *(["--force"] if thin else []), "-f", backup.name,
                        vg.name])
            notes: list[str] = _recreate_thin(vg) if thin else []
        except CommandFailed as exc:
            log.warning("vgcfgrestore failed, recreating %s with new UUIDs: %s", vg.name, exc)
            notes = [f"volume group {vg.name}: vgcfgrestore failed ({exc}); recreated with "
                     "vgcreate/lvcreate: VG and LV UUIDs are new"]
            _create(vg, list(pv_devices.values()))
    runcmd.run(["vgchange", "--activate", "y", vg.name])
    _check_nodes(vg)
    return notes


def _check_nodes(vg: VolumeGroup) -> None:
    """Every LV the restore writes or formats must have its /dev/VG/LV node. vgmknodes
    makes missing ones where udev did not, but exits 5 on a VG with a thin pool (whose
    pool LV has no public node) even after making the others: its status is no verdict,
    the nodes are."""
    runcmd.run(["udevadm", "settle"], check=False)
    runcmd.run(["vgmknodes", vg.name], check=False)
    missing = [f"/dev/{vg.name}/{lv.name}" for lv in vg.lvs
               if (lv.volume or lv.filesystem) and not os.path.exists(f"/dev/{vg.name}/{lv.name}")]
    if missing:
        raise CommandFailed(["vgmknodes", vg.name], 0, "no device node for "
                            + ", ".join(missing) + " after activating the volume group")


def _recreate_thin(vg: VolumeGroup) -> list[str]:
    """vgcfgrestore --force brings back the PV, VG and linear LV UUIDs, but a thin pool's
    own metadata (which thin IDs exist, which blocks they map) lives on its metadata LV,
    not in the VG metadata: the restored pool cannot be activated. So pools (and their
    thin LVs, whose blocks are restored as volumes) are removed and made again."""
    pools = [lv for lv in vg.lvs if lv.segtype == "thin-pool"]
    for pool in pools:
        runcmd.run(["lvremove", "--yes", "--force", "--force", f"{vg.name}/{pool.name}"])
    _create_lvs(vg, [lv for lv in vg.lvs if lv.segtype in ("thin-pool", "thin")])
    return [f"volume group {vg.name}: thin pools " + ", ".join(p.name for p in pools)
            + " and their thin LVs were recreated with lvcreate (their LV UUIDs are new; "
            "PV, VG and other LV UUIDs are the original ones)"]


def _create(vg: VolumeGroup, devices: list[str]) -> None:
    runcmd.run(["vgcreate", "--yes", "-s", f"{vg.extent_size}b", vg.name, *devices])
    _create_lvs(vg, vg.lvs)


def _create_lvs(vg: VolumeGroup, lvs: list[LogicalVolume]) -> None:
    for lv in sorted(lvs, key=lambda lv: lv.segtype != "thin-pool"):
        if lv.segtype == "thin-pool":
            runcmd.run(["lvcreate", "--yes", "--type", "thin-pool", "-L", f"{lv.size}b",
                        "-n", lv.name, vg.name])
        elif lv.segtype == "thin" and lv.pool:
            runcmd.run(["lvcreate", "--yes", "--type", "thin", "-V", f"{lv.size}b",
                        "--thinpool", lv.pool, "-n", lv.name, vg.name])
        else:
            runcmd.run(["lvcreate", "--yes", "-L", f"{lv.size}b", "-n", lv.name, vg.name])
