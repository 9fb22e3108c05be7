"""Recreating LVM volume groups with their original PV, VG and LV UUIDs, from the
vgcfgbackup text captured in the layout (as ReaR does): `pvcreate --uuid
--restorefile`, then `vgcfgrestore` (with --force for thin pools), then activation. A
layout vgcfgrestore cannot rebuild falls back to vgcreate/lvcreate (new VG/LV UUIDs,
same names and sizes). Needs device-mapper: tested inside QEMU VMs."""

from __future__ import annotations

import logging
import tempfile

from cdpcore import runcmd
from cdpcore.errors import CommandFailed
from cdpcore.layout import VolumeGroup

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
            notes: list[str] = []
        except CommandFailed as exc:
            log.warning("vgcfgrestore failed, recreating %s with new UUIDs: %s", vg.name, exc)
            notes = [f"volume group {vg.name}: vgcfgrestore failed ({exc}); recreated with "
                     "vgcreate/lvcreate: VG and LV UUIDs are new"]
            _create(vg, list(pv_devices.values()))
    runcmd.run(["vgchange", "--activate", "y", vg.name])
    runcmd.run(["vgmknodes", vg.name])
    return notes


def _create(vg: VolumeGroup, devices: list[str]) -> None:
    runcmd.run(["vgcreate", "--yes", "-s", f"{vg.extent_size}b", vg.name, *devices])
    for lv in sorted(vg.lvs, key=lambda lv: lv.segtype != "thin-pool"):
        if lv.segtype == "thin-pool":
            runcmd.run(["lvcreate", "--yes", "--type", "thin-pool", "-L", f"{lv.size}b",
                        "-n", lv.name, vg.name])
        elif lv.segtype == "thin" and lv.pool:
            runcmd.run(["lvcreate", "--yes", "--type", "thin", "-V", f"{lv.size}b",
                        "--thinpool", lv.pool, "-n", lv.name, vg.name])
        else:
            runcmd.run(["lvcreate", "--yes", "-L", f"{lv.size}b", "-n", lv.name, vg.name])
