"""Recreating a partition table (GPT or MBR) with pyparted, then setting the identities
pyparted cannot (disk GUID or MBR identifier, type and unique partition GUIDs) with sfdisk, and
reading the result back: a table that does not match the plan is an error, not a warning.

On a fresh table libparted writes the GPT backup header at the end of the target, so a
larger disk gets a correct backup GPT at its new end.
"""

from __future__ import annotations

import re
from typing import Any

import parted

from cdpcore import runcmd
from cdpcore.errors import CommandFailed
from cdpcore.layout import Disk, Partition

from .target import Target

#: Bytes of sector 0 before the MBR disk signature and partition table: boot code.
BOOT_CODE_BYTES = 440
_FLAG_IDS = {name: num for num, name in parted.partitionFlag.items()}
_KINDS = {"primary": parted.PARTITION_NORMAL, "extended": parted.PARTITION_EXTENDED,
          "logical": parted.PARTITION_LOGICAL}


def _add(pdisk: Any, device: Any, part: Partition, table: str) -> None:
    geom = parted.Geometry(device=device, start=part.start, length=part.length)
    ppart = parted.Partition(disk=pdisk, type=_KINDS[part.kind], geometry=geom)
    pdisk.addPartition(partition=ppart, constraint=parted.Constraint(exactGeom=geom))
    if part.kind == "extended":
        return
    for flag in part.flags:
        if flag in _FLAG_IDS and ppart.isFlagAvailable(_FLAG_IDS[flag]):
            ppart.setFlag(_FLAG_IDS[flag])
    if table == "gpt" and part.name:
        ppart.set_name(part.name)


def write_table(path: str, layout: Disk) -> None:
    """Write `layout`'s partition table to `path` (image file or whole block device)."""
    assert layout.table is not None
    # libparted writes a fresh MBR with its own (empty) boot code: keep the restored one.
    with Target(path) as target:
        boot_code = target.read(0, BOOT_CODE_BYTES)
    # libparted caches devices by path for the life of the process: a loop device or file
    # seen before with another size would keep its old length. Probe it afresh.
    parted.getDevice(path).removeFromCache()
    device = parted.getDevice(path)
    pdisk = parted.freshDisk(device, layout.table)
    # Extended before logical partitions: libparted places logicals inside their container.
    order = {"primary": 0, "extended": 0, "logical": 1}
    for part in sorted(layout.partitions, key=lambda p: (order[p.kind], p.number)):
        _add(pdisk, device, part, layout.table)
    if device.type == parted.DEVICE_FILE:
        pdisk.commitToDevice()
    else:
        pdisk.commit()
    if layout.disk_guid:
        runcmd.run(["sfdisk", "--disk-id", path, layout.disk_guid])
    # Types after flags (parted flags such as esp or lvm change the type as a side
    # effect), and by sfdisk: Debian 12's libparted 3.5 cannot set type GUIDs.
    for part in layout.partitions:
        num = str(part.number)
        if layout.table == "gpt":
            if part.type_guid:
                runcmd.run(["sfdisk", "--part-type", path, num, part.type_guid])
            if part.guid:
                runcmd.run(["sfdisk", "--part-uuid", path, num, part.guid])
        elif part.mbr_type is not None and part.kind != "extended":
            runcmd.run(["sfdisk", "--part-type", path, num, f"{part.mbr_type:x}"])
    with Target(path) as target:
        target.write(0, boot_code)
        target.sync()
    check_table(path, layout)


def check_table(path: str, layout: Disk) -> None:
    """Read the table back with sfdisk and compare it with the plan, field by field."""
    doc = runcmd.run_json(["sfdisk", "--json", path])["partitiontable"]
    problems: list[str] = []
    if doc.get("label") != ("gpt" if layout.table == "gpt" else "dos"):
        problems.append(f"label {doc.get('label')}")
    if layout.disk_guid and str(doc.get("id", "")).lower() != layout.disk_guid.lower():
        problems.append(f"disk id {doc.get('id')} instead of {layout.disk_guid}")
    found = {int(re.findall(r"\d+$", str(p["node"]))[0]): p for p in doc.get("partitions", [])}
    for part in layout.partitions:
        got = found.get(part.number)
        if got is None:
            problems.append(f"partition {part.number} missing")
            continue
        want: dict[str, Any] = {"start": part.start, "size": part.length}
        if layout.table == "gpt":
            want.update(type=part.type_guid, uuid=part.guid, name=part.name)
        elif part.mbr_type is not None:
            want["type"] = f"{part.mbr_type:x}"
        for key, value in want.items():
            if value is None:
                continue
            have = got.get(key)
            if str(have).lower() != str(value).lower():
                problems.append(f"partition {part.number} {key} {have} instead of {value}")
    if problems:
        raise CommandFailed(["sfdisk", "--json", path], 0,
                            "the new partition table differs from the plan: "
                            + "; ".join(problems))
