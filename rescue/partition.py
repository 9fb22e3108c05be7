"""Recreating a partition table (GPT or MBR) with pyparted, then setting what pyparted
cannot (partition numbers with gaps, disk GUID or MBR identifier, type and unique
partition GUIDs, GPT attribute bits) with sfdisk, putting back the restored boot area
that these tools clear (with a protective MBR's boot flag), and reading the result back:
a table that does not match the plan is an error, not a warning.

On a fresh table libparted writes the GPT backup header at the end of the target, so a
larger disk gets a correct backup GPT at its new end. libparted writes 128 GPT entries: a
layout numbering a partition past 128 gets, from sfdisk, as many as its highest number
needs (`tables.gpt_entries`), the first and last usable sectors moved to match.
"""

from __future__ import annotations

import re
from typing import Any

import parted

from cdpcore import runcmd
from cdpcore.errors import CommandFailed
from cdpcore.layout import Disk, Partition

from .tables import (
    GPT_MIN_ENTRIES,
    backup_sectors,
    first_usable_sector,
    gpt_attributes,
    gpt_entries,
    outside,
    rewritten_by_table,
)
from .target import Target

#: Most of a boot area kept across the table's writing. libparted clears other labels'
#: signatures (for an MBR: the GPT header and entries, sectors 1-18 at 512 bytes, where
#: GRUB embeds its core image) and sfdisk may too; both write only in the first sectors.
KEEP_BOOT_BYTES = 4 * 1024 * 1024
#: A protective MBR's boot indicator (its one entry's first byte): parted's `pmbr_boot`,
#: which some BIOSes need to boot from a GPT disk (Anaconda sets it on BIOS machines).
#: It lies in the sector the new table rewrites, and sfdisk clears it on every write.
PMBR_BOOT_OFFSET = 446
PMBR_BOOT = b"\x80"
_DUMP_LINE = re.compile(r"^(?P<node>.*?)(?P<number>\d+) : start=\s*(?P<start>\d+),")
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
    """Write `layout`'s partition table to `path` (image file or whole block device),
    keeping the boot area restored before it outside the table's own sectors."""
    assert layout.table is not None
    keep = 0
    if layout.partitions:
        first = min(p.start for p in layout.partitions) * layout.logical_sector_size
        keep = min(first, KEEP_BOOT_BYTES)
    with Target(path) as target:
        boot_area = target.read(0, keep)
    # libparted caches devices by path for the life of the process: a loop device or file
    # seen before with another size would keep its old length. Probe it afresh.
    parted.getDevice(path).removeFromCache()
    device = parted.getDevice(path)
    pdisk = parted.freshDisk(device, layout.table)
    # Extended before logical partitions: libparted places logicals inside their container.
    order = {"primary": 0, "extended": 0, "logical": 1}
    parts = sorted(layout.partitions, key=lambda p: (order[p.kind], p.number))
    # libparted's GPT has 128 entries: more partitions are added by sfdisk (_renumber).
    for part in parts[:GPT_MIN_ENTRIES] if layout.table == "gpt" else parts:
        _add(pdisk, device, part, layout.table)
    if device.type == parted.DEVICE_FILE:
        pdisk.commitToDevice()
    else:
        pdisk.commit()
    for part in _renumber(path, layout, device.length):
        if part.name:
            runcmd.run(["sfdisk", "--part-label", path, str(part.number), part.name])
    if layout.disk_guid:
        runcmd.run(["sfdisk", "--disk-id", path, layout.disk_guid])
    # Types after flags (parted flags such as esp or lvm change the type as a side
    # effect), and by sfdisk: Debian 12's libparted 3.5 cannot set type GUIDs. Attribute
    # bits 48-63 have no parted flag: they come from the source's own entries, which the
    # restored boot area holds.
    attrs = gpt_attributes(boot_area, layout.logical_sector_size) \
        if layout.table == "gpt" else {}
    for part in layout.partitions:
        num = str(part.number)
        if layout.table == "gpt":
            if part.type_guid:
                runcmd.run(["sfdisk", "--part-type", path, num, part.type_guid])
            if part.guid:
                runcmd.run(["sfdisk", "--part-uuid", path, num, part.guid])
            if part.guid in attrs:
                runcmd.run(["sfdisk", "--part-attrs", path, num, attrs[part.guid]])
        elif part.mbr_type is not None:  # extended too: libparted writes 0x05, not 0x0f
            runcmd.run(["sfdisk", "--part-type", path, num, f"{part.mbr_type:x}"])
    with Target(path) as target:
        for start, end in outside(0, len(boot_area), rewritten_by_table(layout)):
            target.write(start, boot_area[start:end])
        if layout.table == "gpt" and boot_area[PMBR_BOOT_OFFSET:PMBR_BOOT_OFFSET + 1] \
                == PMBR_BOOT:  # the source's protective MBR, restored with the boot area
            target.write(PMBR_BOOT_OFFSET, PMBR_BOOT)
        target.sync()
    check_table(path, layout, attrs)


def _renumber(path: str, layout: Disk, sectors: int) -> list[Partition]:
    """Give the partitions their captured numbers where libparted's differ: it numbers
    them in the order they are added, so a layout with gaps (1, 14, 15, as cloud images
    have) comes out as 1, 2, 3. sfdisk takes each partition's number from its node name
    in a script: the table is written again from its own dump, renumbered. A GPT that
    needs more than libparted's 128 entries (partition 200 of a table resized to 256)
    gets them there: the script's `table-length`, and its first and last usable sectors
    (without them sfdisk would start the usable area at 2048, which a partition of the
    plan may precede) on a target of `sectors` sectors; and the partitions past
    libparted's 128, which are returned (their names are still to be set)."""
    wanted = {p.start: p for p in layout.partitions}
    header: dict[str, int] = {}
    if layout.table == "gpt" and gpt_entries(layout) > GPT_MIN_ENTRIES:
        header = {"first-lba": first_usable_sector(layout),
                  "last-lba": sectors - 1 - backup_sectors(layout),
                  "table-length": gpt_entries(layout)}
    dump = runcmd.run_text(["sfdisk", "--dump", path]).splitlines()
    lines, moved, node = [], bool(header), path
    for line in dump:
        m = _DUMP_LINE.match(line)
        if m is not None:
            node, part = m["node"], wanted.pop(int(m["start"]), None)
            number = int(m["number"]) if part is None else part.number
            moved = moved or number != int(m["number"])
            line = f"{node}{number}{line[m.end('number'):]}"
        elif line.partition(":")[0] in header:
            continue  # libparted's, for 128 entries
        lines.append(line)
        if line.startswith("label:"):
            lines.extend(f"{key}: {value}" for key, value in header.items())
    # Past libparted's 128: their types and GUIDs are set afterwards, as all are.
    added = list(wanted.values()) if layout.table == "gpt" else []
    lines.extend(f"{node}{p.number} : start={p.start}, size={p.length}" for p in added)
    if moved or added:
        # --no-reread: udev may still be probing the partitions libparted just announced.
        runcmd.run(["sfdisk", "--quiet", "--wipe", "never", "--no-reread", path],
                   input=("\n".join(lines) + "\n").encode())
    return added


def check_table(path: str, layout: Disk, attrs: dict[str, str] | None = None) -> None:
    """Read the table back with sfdisk and compare it with the plan, field by field (and
    the GPT attributes `attrs`, by unique partition GUID)."""
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
            want.update(type=part.type_guid, uuid=part.guid, name=part.name,
                        attrs=(attrs or {}).get(part.guid or ""))
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
