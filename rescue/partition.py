"""Recreating a partition table (GPT or MBR) with pyparted, then writing it once more,
with what pyparted cannot set (partition numbers with gaps, disk GUID or MBR identifier,
type and unique partition GUIDs, names, GPT attribute bits), by one sfdisk script, putting
back the restored boot area that these tools clear (with a protective MBR's boot flag),
and reading the result back: a table that does not match the plan is an error, not a
warning.

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
_DUMP_LINE = re.compile(r"^(?P<node>.*?)(?P<number>\d+) : (?P<fields>.*)$")
#: A field of a dump's partition line: `start=  2048`, `name="a\x22b"` (quoted, with no
#: `"` inside: sfdisk writes it as \x22), `bootable`.
_DUMP_FIELD = re.compile(r'\s*(?P<key>[\w-]+)(?:=\s*(?P<value>"[^"]*"|[^,]*?))?\s*(?:,|$)')
_FLAG_IDS = {name: num for num, name in parted.partitionFlag.items()}
_KINDS = {"primary": parted.PARTITION_NORMAL, "extended": parted.PARTITION_EXTENDED,
          "logical": parted.PARTITION_LOGICAL}


def _add(pdisk: Any, device: Any, part: Partition) -> None:
    geom = parted.Geometry(device=device, start=part.start, length=part.length)
    ppart = parted.Partition(disk=pdisk, type=_KINDS[part.kind], geometry=geom)
    pdisk.addPartition(partition=ppart, constraint=parted.Constraint(exactGeom=geom))
    if part.kind == "extended":
        return
    for flag in part.flags:
        if flag in _FLAG_IDS and ppart.isFlagAvailable(_FLAG_IDS[flag]):
            ppart.setFlag(_FLAG_IDS[flag])


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
    # libparted's GPT has 128 entries: more partitions are added by sfdisk (_script).
    for part in parts[:GPT_MIN_ENTRIES] if layout.table == "gpt" else parts:
        _add(pdisk, device, part)
    if device.type == parted.DEVICE_FILE:
        pdisk.commitToDevice()
    else:
        pdisk.commit()
    # Attribute bits 48-63 have no parted flag: they come from the source's own entries,
    # which the restored boot area holds.
    attrs = gpt_attributes(boot_area, layout.logical_sector_size) \
        if layout.table == "gpt" else {}
    # One write (sfdisk sleeps a quarter of a second after each). --wipe never: the table
    # it replaces is libparted's of a moment ago, and the target's other bytes are the
    # restore's. --no-reread: udev may still be probing the partitions libparted just
    # announced.
    runcmd.run(["sfdisk", "--quiet", "--wipe", "never", "--no-reread", path],
               input=_script(path, layout, device.length, attrs).encode())
    with Target(path) as target:
        for start, end in outside(0, len(boot_area), rewritten_by_table(layout)):
            target.write(start, boot_area[start:end])
        if layout.table == "gpt" and boot_area[PMBR_BOOT_OFFSET:PMBR_BOOT_OFFSET + 1] \
                == PMBR_BOOT:  # the source's protective MBR, restored with the boot area
            target.write(PMBR_BOOT_OFFSET, PMBR_BOOT)
        target.sync()
    check_table(path, layout, attrs)


def _script(path: str, layout: Disk, sectors: int, attrs: dict[str, str]) -> str:
    """The sfdisk script of the table libparted wrote to `path` (its `--dump`), completed
    from the plan:

    - each partition gets its captured number where libparted's differs: it numbers them
      in the order they are added, so a layout with gaps (1, 14, 15, as cloud images
      have) comes out as 1, 2, 3; sfdisk takes the number from a line's node name;
    - the disk GUID or MBR identifier (`label-id`);
    - GPT type and unique partition GUIDs, names, and the attribute bits `attrs` (by
      unique GUID) where the source's entry has them; the MBR type (of an extended
      container too: libparted writes 0x05, not 0x0f). Types are set after parted's
      flags (such as esp or lvm), which change the type as a side effect: the script's
      type wins. sfdisk sets them because Debian 12's libparted 3.5 cannot set type GUIDs;
    - a GPT that needs more than libparted's 128 entries (partition 200 of a table
      resized to 256) gets them: the script's `table-length`, and its first and last
      usable sectors (without them sfdisk would start the usable area at 2048, which a
      partition of the plan may precede) on a target of `sectors` sectors; and the
      partitions past libparted's 128."""
    wanted = {p.start: p for p in layout.partitions}
    header: dict[str, str | int] = {}
    if layout.disk_guid:
        header["label-id"] = layout.disk_guid
    if layout.table == "gpt" and gpt_entries(layout) > GPT_MIN_ENTRIES:
        header.update({"first-lba": first_usable_sector(layout),
                       "last-lba": sectors - 1 - backup_sectors(layout),
                       "table-length": gpt_entries(layout)})
    lines, node = [], path
    for line in runcmd.run_text(["sfdisk", "--dump", path]).splitlines():
        m = _DUMP_LINE.match(line)
        if m is None:
            if line.partition(":")[0] not in header:  # else libparted's
                lines.append(line)
            if line.startswith("label:"):
                lines.extend(f"{key}: {value}" for key, value in header.items())
            continue
        node = m["node"]
        fields = {f["key"]: f["value"] for f in _DUMP_FIELD.finditer(m["fields"])}
        part = wanted.pop(int(fields["start"]), None)
        if part is None:
            lines.append(line)
            continue
        lines.append(_entry(node, part, fields, layout.table == "gpt", attrs))
    # Past libparted's 128 (a GPT's: an MBR's are all there).
    for part in wanted.values() if layout.table == "gpt" else []:
        lines.append(_entry(node, part, {"start": str(part.start), "size": str(part.length)},
                            True, attrs))
    return "\n".join(lines) + "\n"


def _entry(node: str, part: Partition, fields: dict[str, str | None], gpt: bool,
           attrs: dict[str, str]) -> str:
    """The script line of `part`: its dump's `fields` (libparted's), with the plan's."""
    if gpt:
        if part.type_guid:
            fields["type"] = part.type_guid
        if part.guid:
            fields["uuid"] = part.guid
        if part.name:
            fields["name"] = _quoted(part.name)
        if part.guid in attrs:
            fields["attrs"] = _quoted(attrs[part.guid])
    elif part.mbr_type is not None:
        fields["type"] = f"{part.mbr_type:x}"
    return f"{node}{part.number} : " + ", ".join(
        key if value is None else f"{key}={value}" for key, value in fields.items())


def _quoted(text: str) -> str:
    """`text` as a quoted value of an sfdisk script (libfdisk's parser): within the quotes
    commas, semicolons and blanks are the value's, and any \\xNN is decoded to its byte;
    there is no other escape. So `"`, `\\` and every byte outside printable ASCII of its
    UTF-8 are written as \\xNN, as `sfdisk --dump` writes them. (A name with characters
    past Unicode's BMP, such as emoji, is set by neither sfdisk 2.38, `--part-label`
    included, nor libparted 3.5: `check_table` reports it.)"""
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}"
                         for b in text.encode()) + '"'


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
