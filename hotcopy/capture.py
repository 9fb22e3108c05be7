"""Layout capture: what a recovery point records about each protected disk (partition
table, GUIDs, filesystems, identity, boot area) and which volumes it copies.

Partition geometry, types and flags come from pyparted; GUIDs and the MBR disk identifier
from `sfdisk --json`, whose partition list must agree with pyparted's or the capture
fails: a table two tools read differently is not a table to restore from. Filesystems are
probed with `blkid -p` at each partition's offset, so no partition device nodes are
needed.

The protected disk is only ever opened read-only. libparted opens a disk read-write and
fsyncs it, and udev answers the close of a disk opened for writing by probing it and
every partition again: at a point a minute, a constant churn on a production server. So
pyparted reads a copy of the table's sectors (`sfdisk --backup-pt-sectors`, which reads
them read-only, EBRs and the GPT backup included) placed at their offsets in a sparse
in-memory file of the disk's size. libparted takes a file's sectors to be 512 bytes, so a
disk of other logical sectors (4Kn) is still read by pyparted itself, as it is where
sfdisk predates that option (older util-linux).

One sector the copy does not hold: the EBR of an MBR extended container with no logical
partitions. libfdisk drops an EBR that lists nothing from its table, so sfdisk backs up
the MBR alone, while libparted reads each container's first sector and refuses one
without the boot signature ("wrong signature 0"). The copy gets an empty EBR there, which
is what sfdisk read (whether the disk holds one, as sfdisk and parted write it, or zeros).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import parted

from cdpcore import runcmd
from cdpcore.errors import CommandFailed
from cdpcore.layout import (
    AMBIVALENT,
    FILE_SECTOR,
    Disk,
    Filesystem,
    Layout,
    Partition,
    PartitionRole,
)

from .errors import SourceError

log = logging.getLogger("cdp.agent.capture")

ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
SWAP_GUID = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
#: The Discoverable Partitions Specification's "Linux extended boot" (XBOOTLDR): a /boot.
XBOOTLDR_GUID = "bc13c2ff-59e6-4262-a352-b275fd6f7172"
LVM_GUID = "e6d6d379-f507-44c2-a23c-238f2a3df928"
MBR_SWAP, MBR_LVM, MBR_ESP = 0x82, 0x8E, 0xEF
MBR_EXTENDED = (0x05, 0x0F, 0x85)
#: The MBR partition type of a GPT's protective MBR.
GPT_PROTECTIVE = 0xEE
#: An EBR that lists no partition: zeros and the boot signature.
EMPTY_EBR = bytes(510) + b"\x55\xaa"
#: The logical sector size of 4Kn disks.
LARGE_SECTOR = 4096
#: <linux/fs.h>: logical and physical sector size of a block device
_BLKSSZGET, _BLKPBSZGET = 0x1268, 0x127B
#: Characters of blkid's buffer for an encoded value (`print_udev_format`), its end included.
_BLKID_ENC_ROOM = 265


@dataclass(frozen=True)
class VolumeSpec:
    """A byte range of a source that becomes one volume of the point."""

    name: str
    path: str  # the device or image file to read
    offset: int
    size: int
    fstype: str | None = None  # as captured (blkid); the free-space map needs its word


def fstype(fs: Filesystem | None) -> str | None:
    """A VolumeSpec's `fstype` from what the capture recorded."""
    return fs.type if fs is not None else None


@dataclass
class DiskCapture:
    disk: Disk
    volumes: list[VolumeSpec]


def source_size(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return f.seek(0, os.SEEK_END)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such device or file") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot open for reading: {exc.strerror}") from None


def disk_name(path: str) -> str:
    """Kernel name of a block device (vda, loop0, nvme0n1), or an image file's name."""
    return Path(os.path.realpath(path)).name


def probe_fs(path: str, offset: int, size: int) -> Filesystem | None:
    """blkid's answer for the bytes [offset, offset+size) of `path`. Read in its udev
    format, whose `_ENC` values are exact (`\\xNN` for a byte it escapes): the export
    format escapes a space, a quote, a newline or a non-ASCII byte for a shell's eyes."""
    proc = runcmd.run(["blkid", "-p", "-o", "udev", "-O", str(offset), "-S", str(size),
                       path], check=False)
    if proc.returncode == 2:  # blkid: nothing recognised
        return None
    if proc.returncode == 8:
        log.warning("%s: bytes %d-%d hold more than one filesystem signature (blkid: "
                    "ambivalent result; `wipefs --no-act` lists them): recorded as %r, "
                    "copied as they are, no block skipped as free", path, offset,
                    offset + size - 1, AMBIVALENT)
        return Filesystem(type=AMBIVALENT)
    if proc.returncode != 0:
        raise CommandFailed(["blkid", "-p", path], proc.returncode, proc.stderr.decode())
    tags = dict(line.split("=", 1) for line
                in proc.stdout.decode(errors="surrogateescape").splitlines() if "=" in line)
    if "ID_FS_TYPE" not in tags:
        return None
    label = _blkid_decode(tags["ID_FS_LABEL_ENC"]) if "ID_FS_LABEL_ENC" in tags else None
    if label is not None and len(tags["ID_FS_LABEL_ENC"]) > _BLKID_ENC_ROOM - 4:
        # Maybe cut short (blkid has room for 264 characters, 4 an escaped byte): read
        # the label alone, as raw bytes (-d), ended by the one newline blkid adds.
        out = runcmd.run(["blkid", "-p", "-d", "-o", "value", "-s", "LABEL", "-O",
                          str(offset), "-S", str(size), path]).stdout
        label = out.removesuffix(b"\n").decode(errors="replace")
    uuid = _blkid_decode(tags["ID_FS_UUID_ENC"]) if "ID_FS_UUID_ENC" in tags else None
    return Filesystem(type=_blkid_decode(tags["ID_FS_TYPE"]), uuid=uuid, label=label)


def _blkid_decode(value: str) -> str:
    """A value of blkid's udev format (`ID_FS_LABEL_ENC`): each byte it escaped as
    `\\xNN` (a backslash too), valid UTF-8 as it is."""
    raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]),
                 value.encode(errors="surrogateescape"))
    return raw.decode(errors="replace")


def is_block_device(path: str) -> bool:
    return stat.S_ISBLK(os.stat(path).st_mode)


def _identity(path: str, disk: Disk) -> None:
    if not is_block_device(path):
        disk.transport = "file"
        return
    doc = runcmd.run_json(["lsblk", "-J", "-O", "-d", "-b", path])
    dev: dict[str, Any] = (doc.get("blockdevices") or [{}])[0]
    disk.model = (dev.get("model") or "").strip() or None
    disk.serial = (dev.get("serial") or "").strip() or None
    disk.wwn = dev.get("wwn") or None
    disk.transport = dev.get("tran") or ("loop" if disk.name.startswith("loop") else None)


def _role(fs: Filesystem | None, type_guid: str | None, mbr_type: int | None,
          flags: list[str], kind: str, boot_fs: str | None = None) -> PartitionRole:
    """What the partition is for. `boot_fs`: the filesystem UUID of the running system's
    separate /boot, which a restore onto a larger disk leaves at its size (rescue.resize)."""
    if kind == "extended":
        return "extended"
    fstype = fs.type if fs else None
    # What blkid finds decides: a partition typed swap (0x82 is Solaris' type too) that
    # holds a filesystem or a PV is not remade as swap. The type decides when blkid finds
    # nothing (a swap encrypted with a random key at every boot) or a swap area that
    # holds a hibernation image (swsuspend).
    if fstype == "swap" or (fstype in (None, "swsuspend")
                            and (type_guid == SWAP_GUID or mbr_type == MBR_SWAP)):
        return "swap"
    if fstype == "LVM2_member" or type_guid == LVM_GUID or mbr_type == MBR_LVM:
        return "lvm_pv"
    if type_guid == ESP_GUID or mbr_type == MBR_ESP or "esp" in flags:
        return "esp"
    if type_guid == BIOS_BOOT_GUID or "bios_grub" in flags:
        return "bios_boot"
    if type_guid == XBOOTLDR_GUID or (fs is not None and fs.uuid is not None
                                      and fs.uuid.lower() == boot_fs):
        return "boot"
    return "data"


def boot_uuid() -> str | None:
    """The filesystem UUID of a separate /boot of the running system, or None (/boot is
    part of the root filesystem: findmnt finds no mount there)."""
    out = runcmd.run(["findmnt", "--noheadings", "--output", "UUID", "--mountpoint", "/boot"],
                     check=False)
    if out.returncode != 0:
        return None
    return out.stdout.decode(errors="replace").strip().lower() or None


def drop_cache(device: str) -> None:
    """Drop a block device's page cache (`blockdev --flushbufs`, which opens it read-only).
    The cache is the device's own (a whole disk's is not its partitions'): it may still
    hold blocks read before that a filesystem has rewritten since, through a partition."""
    runcmd.run(["blockdev", "--flushbufs", device])


def _sfdisk(path: str) -> dict[str, Any] | None:
    """`sfdisk --json`'s table, or None when the disk holds no table sfdisk recognises."""
    argv = ["sfdisk", "--json", path]
    proc = runcmd.run(argv, check=False, env=runcmd.untranslated())
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        if "does not contain a recognized partition table" in err:
            return None
        raise CommandFailed(argv, proc.returncode, err)
    out = proc.stdout.decode(errors="replace")
    # libfdisk's notes ("omitting empty partition (6)": an EBR that lists nothing but
    # links to the next) come on the standard output, before the JSON.
    doc: dict[str, Any] = runcmd.parse_json(argv, out[max(out.find("{\n"), 0):])
    table: dict[str, Any] = doc["partitiontable"]
    return table


def sector_sizes(device: str) -> tuple[int, int]:
    """A block device's (logical, physical) sector size."""
    fd = os.open(device, os.O_RDONLY)
    try:
        logical, physical = (struct.unpack("I", fcntl.ioctl(fd, request, bytes(4)))[0]
                             for request in (_BLKSSZGET, _BLKPBSZGET))
    finally:
        os.close(fd)
    return logical, physical


@contextmanager
def table_copy(path: str, size: int, containers: tuple[int, ...] = ()) -> Iterator[str]:
    """A path to a sparse in-memory file of `size` bytes that holds the disk's partition
    table sectors at their offsets and zeros elsewhere, and an empty EBR at each byte
    offset of `containers` (MBR extended containers) where sfdisk backed up no EBR (see
    the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="cdp-table-") as tmp:
        runcmd.run(["sfdisk", "--backup-pt-sectors", path, "-O", f"{tmp}/pt"],
                   env=runcmd.untranslated())
        fd = os.memfd_create("cdp-table")
        try:
            os.ftruncate(fd, size)
            # Named PREFIX-DEVICE-0xOFFSET.bak (the device's name may hold dashes).
            offsets = set()
            for backup in Path(tmp).iterdir():
                offset = int(backup.name.rsplit("-", 1)[1].removesuffix(".bak"), 16)
                os.pwrite(fd, backup.read_bytes(), offset)
                offsets.add(offset)
            for offset in set(containers) - offsets:
                os.pwrite(fd, EMPTY_EBR, offset)
            _complete_chains(fd, path, containers)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)


def _complete_chains(copy: int, path: str, containers: tuple[int, ...]) -> None:
    """Put into the table copy `copy` each EBR of the chains of `containers` (byte
    offsets) that sfdisk did not back up, read from the disk: one that lists nothing but
    links to the next (sfdisk: "omitting empty partition"), where libparted would find
    zeros and refuse the table."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for container in containers:
            ebr, seen = container, set()
            while ebr not in seen:
                seen.add(ebr)
                sector = os.pread(copy, FILE_SECTOR, ebr)
                if sector[510:] != EMPTY_EBR[510:]:
                    sector = os.pread(fd, FILE_SECTOR, ebr)
                    if sector[510:] != EMPTY_EBR[510:]:
                        break  # a broken chain: as sfdisk and libparted find it
                    os.pwrite(copy, sector, ebr)
                link = sector[462:478]  # the second entry: the next EBR, from the container
                if link[4] not in MBR_EXTENDED or not int.from_bytes(link[8:12], "little"):
                    break
                ebr = container + int.from_bytes(link[8:12], "little") * FILE_SECTOR
    finally:
        os.close(fd)


@dataclass(frozen=True)
class PartedPartition:
    number: int
    start: int  # sectors
    length: int
    kind: str  # primary, extended, logical
    flags: list[str]


def parted_partitions(path: str) -> tuple[str, list[PartedPartition]] | None:
    """pyparted's table type and partitions of `path` (None: no table it reads)."""
    # libparted caches devices by path for the life of the process: probe afresh, or a
    # device seen before with another size keeps its old length.
    parted.getDevice(path).removeFromCache()
    device = parted.getDevice(path)
    try:
        try:
            pdisk = parted.newDisk(device)
        except parted.DiskException:
            return None
        kinds = {parted.PARTITION_LOGICAL: "logical", parted.PARTITION_EXTENDED: "extended"}
        return pdisk.type, [
            PartedPartition(p.number, p.geometry.start, p.geometry.length,
                            kinds.get(p.type, "primary"),
                            sorted(f for f in p.getFlagsAsString().split(", ") if f))
            for p in sorted(pdisk.partitions, key=lambda p: p.number)]
    finally:
        device.removeFromCache()


def hybrid_mbr(path: str) -> bool:
    """True if the MBR of a GPT disk lists partitions beside the protective one (0xee): a
    hybrid MBR (sgdisk -h), for firmware that boots from the MBR."""
    with open(path, "rb") as f:
        mbr = f.read(512)
    return any(mbr[entry + 4] not in (0, GPT_PROTECTIVE)
               for entry in range(446, 510, 16) if len(mbr) == 512)


def _number(sfpart: dict[str, Any]) -> int:
    """The number of a partition of `sfdisk --json`: its node's (sda2, loop0p2, d.img2)."""
    return int(re.findall(r"\d+$", str(sfpart["node"]))[0])


def _gpt_header(sector: bytes, lba: int) -> bool:
    """True if `sector` is a GPT header that says it is at `lba`, its CRC32 right."""
    if len(sector) < 92 or sector[:8] != b"EFI PART":
        return False
    header_size, crc = struct.unpack_from("<II", sector, 12)
    if not 92 <= header_size <= len(sector) or struct.unpack_from("<Q", sector, 24)[0] != lba:
        return False
    return zlib.crc32(sector[:16] + bytes(4) + sector[20:header_size]) == int(crc)


def _check_file_gpt(path: str, size: int) -> None:
    """An image file is read as a disk of 512-byte sectors, where a GPT of 4096-byte
    sectors is no GPT: its headers are in the 4096-byte sectors 1 and last. sfdisk reads
    the protective MBR alone, which pyparted refuses, and the disk would be copied whole,
    no partition a volume of its own: refuse a file with a protective MBR (an entry of
    type 0xee, a hybrid MBR's too) and a GPT header, primary or backup, where 4096-byte
    sectors put it. Run when sfdisk reads no GPT of 512-byte sectors."""
    last = size // LARGE_SECTOR - 1
    if last < 2:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        mbr = os.pread(fd, FILE_SECTOR, 0)
        if len(mbr) < FILE_SECTOR or mbr[510:] != EMPTY_EBR[510:] or all(
                mbr[entry + 4] != GPT_PROTECTIVE for entry in range(446, 510, 16)):
            return
        for lba in (1, last):
            if _gpt_header(os.pread(fd, LARGE_SECTOR, lba * LARGE_SECTOR), lba):
                raise SourceError(
                    f"{path}: a GPT of {LARGE_SECTOR}-byte sectors (a header at byte "
                    f"{lba * LARGE_SECTOR}), which this file read as {FILE_SECTOR}-byte "
                    f"sectors does not show: an image of a disk of {LARGE_SECTOR}-byte "
                    f"sectors; attach it as a loop device (losetup --sector-size "
                    f"{LARGE_SECTOR}) and protect that")
    finally:
        os.close(fd)


def _check_file_sectors(path: str, disk: Disk) -> None:
    """An image file is read as a disk of 512-byte sectors. A GPT of 4096-byte sectors is
    then no GPT (`_check_file_gpt` refuses it), but an MBR reads as one, its partitions at
    an eighth of their offsets: refuse a file with an MBR partition that holds nothing
    where it says, and a filesystem where 4096-byte sectors would put it (where no
    partition of the table starts)."""
    starts = {p.start * FILE_SECTOR for p in disk.partitions}
    for part in disk.partitions:
        start, end = part.start * LARGE_SECTOR, (part.start + part.length) * LARGE_SECTOR
        if part.filesystem is not None or part.kind == "extended" or end > disk.size \
                or start in starts:
            continue
        found = probe_fs(path, start, end - start)
        if found is not None:
            raise SourceError(
                f"{path}: partition {part.number} holds nothing at byte "
                f"{part.start * FILE_SECTOR} but {found.type} at byte {start}: an image of "
                f"a disk of {LARGE_SECTOR}-byte sectors, which this file read as "
                f"{FILE_SECTOR}-byte sectors would copy wrong; attach it as a loop device "
                f"(losetup --sector-size {LARGE_SECTOR}) and protect that")


def extended_containers(table: dict[str, Any]) -> tuple[int, ...]:
    """The start sectors of the MBR extended containers of an `sfdisk --json` table."""
    if table.get("label") != "dos":
        return ()
    return tuple(int(p["start"]) for p in table.get("partitions", [])
                 if int(str(p["type"]), 16) in MBR_EXTENDED)


def read_table(path: str, size: int, logical_sector: int, containers: tuple[int, ...] = (),
               ) -> tuple[str, list[PartedPartition]] | None:
    """pyparted's view of the disk's table, read from a copy of its sectors where
    libparted can (see the module's docstring). `containers`: the start sectors of the
    MBR extended containers sfdisk reads (`extended_containers`)."""
    if logical_sector != FILE_SECTOR:
        log.info("%s: %d-byte sectors: pyparted reads the disk itself", path, logical_sector)
        return parted_partitions(path)
    try:
        with table_copy(path, size, tuple(s * FILE_SECTOR for s in containers)) as copy:
            return parted_partitions(copy)
    except CommandFailed as exc:
        if "unrecognized option" not in exc.stderr:
            raise
    log.warning("%s: this sfdisk has no --backup-pt-sectors (older util-linux): pyparted "
                "reads the disk itself, which opens it read-write", path)
    return parted_partitions(path)


def capture_disk(path: str, boot_fs: str | None = None) -> DiskCapture:
    """Read one disk (block device or image file): its layout and its volumes. `boot_fs`:
    the UUID of the running system's /boot filesystem (`boot_uuid`), if separate."""
    size = source_size(path)
    if size == 0:  # sfdisk's "cannot open ... (exit 10)" said nothing of why
        raise SourceError(f"{path}: empty (0 bytes), nothing to protect: a drive without "
                          "its medium, or an image file not written yet")
    name = disk_name(path)
    block = is_block_device(path)
    sector, physical = sector_sizes(path) if block else (FILE_SECTOR, FILE_SECTOR)
    disk = Disk(name=name, size=size, logical_sector_size=sector,
                physical_sector_size=physical)
    _identity(path, disk)
    if block:
        drop_cache(path)  # read the table and the superblocks as they are on the disk
    table = _sfdisk(path)
    if not block and (table or {}).get("label") != "gpt":
        _check_file_gpt(path, size)
    parted_table = None
    if table is not None and table.get("label") in ("gpt", "dos"):
        parted_table = read_table(path, size, sector, extended_containers(table))
        if parted_table is None:
            # A damaged backup GPT, MBR logicals past sfdisk's 60: nothing is lost when
            # the disk is copied whole, but its partitions are not volumes of their own.
            log.warning("%s: sfdisk reads a %s partition table that pyparted cannot: the "
                        "disk is copied whole, table included", path, table["label"])
    if parted_table is not None and not parted_table[1]:
        # A table that lists nothing, over a filesystem made on the whole disk: a boot
        # sector (GRUB's boot.img) in its sector 0, which ext4 and btrfs leave unused.
        whole = probe_fs(path, 0, size)
        if whole is not None:
            log.warning("%s: the %s partition table lists no partition, and the whole disk "
                        "holds %s: the disk is copied whole, table included", path,
                        parted_table[0], whole.type)
            parted_table = None
    if table is None or parted_table is None or parted_table[0] not in ("gpt", "msdos"):
        disk.filesystem = probe_fs(path, 0, size)
        if disk.filesystem is not None and disk.filesystem.type == "LVM2_member":
            return DiskCapture(disk, [])  # a whole-disk PV: its LVs are the volumes
        disk.volume = f"{name}:whole"
        return DiskCapture(disk, [VolumeSpec(disk.volume, path, 0, size,
                                             fstype(disk.filesystem))])
    disk.table = "gpt" if parted_table[0] == "gpt" else "msdos"
    if disk.table == "gpt" and hybrid_mbr(path):
        log.warning("%s: the GPT has a hybrid MBR (MBR partitions beside the protective "
                    "one), which the layout does not hold: a restore writes a protective "
                    "MBR alone", path)
    label_id = str(table.get("id", ""))
    disk.disk_guid = label_id.lower() if disk.table == "gpt" else label_id.lower() or None
    # Both ways: libparted skips what sfdisk and the kernel take for a partition (an MBR
    # entry of type 0 with a size), which the rescue would not rebuild.
    by_start = {int(p["start"]): p for p in table.get("partitions", [])}
    unmatched = list(table.get("partitions", []))
    volumes: list[VolumeSpec] = []
    for ppart in parted_table[1]:
        start, length = ppart.start, ppart.length
        sf = by_start.get(start)
        if sf is None or int(sf["size"]) != length or _number(sf) != ppart.number:
            raise SourceError(f"{path}: pyparted and sfdisk disagree about partition "
                              f"{ppart.number} (start {start}, {length} sectors)")
        unmatched.remove(sf)
        part = Partition(number=ppart.number, start=start, length=length,
                         kind=ppart.kind, flags=ppart.flags)  # type: ignore[arg-type]
        if disk.table == "gpt":
            part.type_guid = str(sf["type"]).lower()
            part.guid = str(sf.get("uuid", "")).lower() or None
            part.name = sf.get("name") or None
        else:
            part.mbr_type = int(str(sf["type"]), 16)
        if ppart.kind != "extended":
            part.filesystem = probe_fs(path, start * sector, length * sector)
        part.role = _role(part.filesystem, part.type_guid, part.mbr_type, part.flags,
                          ppart.kind, boot_fs)
        if part.role in ("data", "esp", "bios_boot", "boot", "other"):
            part.volume = f"{name}:p{part.number}"
            volumes.append(VolumeSpec(part.volume, path, start * sector, length * sector,
                                      fstype(part.filesystem)))
        disk.partitions.append(part)
    if not block and disk.table == "msdos":
        _check_file_sectors(path, disk)
    if unmatched:
        sf = unmatched[0]
        raise SourceError(f"{path}: sfdisk reads partition {_number(sf)} (start {sf['start']}, "
                          f"{sf['size']} sectors), pyparted does not: a table two tools read "
                          "differently is not one to restore from")
    if disk.partitions:
        first = min(p.start for p in disk.partitions) * sector
        disk.boot_area_volume = f"{name}:boot"
        volumes.insert(0, VolumeSpec(disk.boot_area_volume, path, 0, first))
    return DiskCapture(disk, volumes)


def boot_mode() -> str:
    return "uefi" if Path("/sys/firmware/efi").exists() else "bios"


def capture(paths: list[str], hostname: str | None = None) -> tuple[Layout, list[VolumeSpec]]:
    """Capture every source: the layout of the point and the volumes to copy, in order."""
    layout = Layout(hostname=hostname or socket.gethostname(),
                    boot_mode=boot_mode())  # type: ignore[arg-type]
    volumes: list[VolumeSpec] = []
    seen: set[str] = set()
    boot_fs = boot_uuid()
    for path in paths:
        cap = capture_disk(path, boot_fs)
        if cap.disk.name in seen:
            raise SourceError(f"two sources are named {cap.disk.name!r}: volume names "
                              "would collide")
        seen.add(cap.disk.name)
        layout.disks.append(cap.disk)
        volumes.extend(cap.volumes)
    pv_parts = [(d, p) for d in layout.disks for p in d.partitions if p.role == "lvm_pv"]
    pv_disks = [d for d in layout.disks
                if d.filesystem is not None and d.filesystem.type == "LVM2_member"]
    if [d for d, _ in pv_parts] + pv_disks and all(
            d.transport != "file" for d in [d for d, _ in pv_parts] + pv_disks):
        from .lvmcapture import capture_lvm  # LVM tools are needed only for LVM hosts

        volumes.extend(capture_lvm(layout))
    # A PV whose VG the host's LVM does not show (an image file, an inactive VG) is copied
    # as raw bytes, metadata included, rather than silently left out.
    in_vgs = {pv.device for vg in layout.volume_groups for pv in vg.pvs}
    for disk in pv_disks:
        if disk.name not in in_vgs:
            disk.volume = f"{disk.name}:whole"
            volumes.append(VolumeSpec(disk.volume, paths[[d.name for d in layout.disks]
                                                         .index(disk.name)], 0, disk.size,
                                      fstype(disk.filesystem)))
    for disk, part in pv_parts:
        if partition_name(disk.name, part.number) not in in_vgs:
            part.volume = f"{disk.name}:p{part.number}"
            sector = disk.logical_sector_size
            path = paths[[d.name for d in layout.disks].index(disk.name)]
            volumes.append(VolumeSpec(part.volume, path, part.start * sector,
                                      part.length * sector, fstype(part.filesystem)))
    return layout, volumes


def local_disks() -> list[str]:
    """What the agent protects when no source is configured: every local disk."""
    return pick_local_disks(runcmd.run_json(["lsblk", "-J", "-d", "-b", "-o",
                                             "NAME,PATH,TYPE,RO,RM,SIZE"]))


def pick_local_disks(doc: dict[str, Any]) -> list[str]:
    """Disks of an `lsblk -J -d` answer worth protecting: writable, fixed, not empty; not
    loop devices, RAM disks, zram swap, optical drives or removable media (a USB stick
    plugged in for the day is not part of the server). Pure."""
    out = []
    for dev in doc.get("blockdevices") or []:
        name = str(dev.get("name") or "")
        if (dev.get("type") != "disk" or _flag(dev.get("ro")) or _flag(dev.get("rm"))
                or not int(dev.get("size") or 0) or name.startswith(("zram", "ram", "loop"))):
            continue
        out.append(str(dev.get("path") or f"/dev/{name}"))
    return sorted(out)


def _flag(value: Any) -> bool:
    # lsblk prints booleans as true/false, or as "0"/"1" in older versions
    return value in (True, 1, "1", "true")


def partition_name(disk: str, number: int) -> str:
    """Kernel name of a partition: vda3, but nvme0n1p3 and loop0p3."""
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"
