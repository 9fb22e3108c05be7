"""The disk layout model: what a recovery point records about the host's storage, and
what the rescue engine rebuilds from (docs/FORMAT.md, "Layout").

Plain dataclasses with a versioned JSON form. Sizes are in bytes unless a field says
sectors; GUIDs and UUIDs are lower-case strings as the kernel and blkid print them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .errors import FormatError

LAYOUT_VERSION = 1
#: The sector size of an image file: libparted and sfdisk read a regular file as a disk
#: of 512-byte sectors.
FILE_SECTOR = 512
#: `Filesystem.type` of bytes where blkid finds more than one filesystem signature (an
#: "ambivalent result": a ZFS vdev or an md member over an old ext4's superblock): which
#: one is current is unknown, so the bytes are copied as they are and nothing is skipped.
AMBIVALENT = "ambivalent"

TableType = Literal["gpt", "msdos"]
PartitionRole = Literal["data", "esp", "bios_boot", "boot", "swap", "lvm_pv", "extended", "other"]
BootMode = Literal["uefi", "bios", "unknown"]


@dataclass
class Filesystem:
    type: str  # as blkid says: ext4, xfs, vfat, swap, LVM2_member, ...
    uuid: str | None = None
    label: str | None = None


@dataclass
class Partition:
    number: int
    start: int  # first sector, in the disk's logical sectors
    length: int  # sectors
    role: PartitionRole = "data"
    kind: Literal["primary", "logical", "extended"] = "primary"
    type_guid: str | None = None  # GPT partition type GUID
    guid: str | None = None  # GPT unique partition GUID
    name: str | None = None  # GPT partition name
    mbr_type: int | None = None  # MBR system ID, e.g. 0x83
    flags: list[str] = field(default_factory=list)  # parted flag names: boot, esp, bios_grub, lvm
    filesystem: Filesystem | None = None
    #: Name of the volume in the point that holds this partition's bytes; None when its
    #: content is not copied (swap, LVM PV: its LVs are volumes, extended partitions).
    volume: str | None = None


@dataclass
class Disk:
    name: str  # kernel name on the source (vda, nvme0n1) or the image file's name
    size: int
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    model: str | None = None
    serial: str | None = None
    wwn: str | None = None
    transport: str | None = None  # sata, nvme, virtio, usb, file
    table: TableType | None = None
    disk_guid: str | None = None  # GPT disk GUID, or the MBR disk identifier as 0xXXXXXXXX
    partitions: list[Partition] = field(default_factory=list)
    #: Volume holding bytes [0, first partition start): MBR boot code, GRUB's embedding area.
    boot_area_volume: str | None = None
    #: Volume holding the whole disk, for a disk without a partition table.
    volume: str | None = None
    filesystem: Filesystem | None = None  # whole-disk filesystem or PV signature, if any

    def partition(self, number: int) -> Partition:
        for part in self.partitions:
            if part.number == number:
                return part
        raise KeyError(f"{self.name} has no partition {number}")


@dataclass
class PhysicalVolume:
    uuid: str
    device: str  # the source device: "vda3" (partition) or "vdb" (whole disk)
    size: int
    pe_start: int  # bytes from the device start to the first extent


@dataclass
class LogicalVolume:
    name: str
    uuid: str
    size: int
    segtype: str = "linear"  # linear, striped, thin-pool, thin, ...
    pool: str | None = None  # thin pool of a thin LV
    filesystem: Filesystem | None = None
    volume: str | None = None  # volume holding its bytes; None for pools and swap


@dataclass
class VolumeGroup:
    name: str
    uuid: str
    extent_size: int
    pvs: list[PhysicalVolume] = field(default_factory=list)
    lvs: list[LogicalVolume] = field(default_factory=list)
    metadata: str = ""  # the vgcfgbackup text, for pvcreate --restorefile / vgcfgrestore


@dataclass
class Layout:
    hostname: str
    boot_mode: BootMode = "unknown"
    disks: list[Disk] = field(default_factory=list)
    volume_groups: list[VolumeGroup] = field(default_factory=list)
    version: int = LAYOUT_VERSION

    def disk(self, name: str) -> Disk:
        for disk in self.disks:
            if disk.name == name:
                return disk
        raise KeyError(f"layout has no disk {name!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any) -> Layout:
        try:
            if doc["version"] != LAYOUT_VERSION:
                raise FormatError(f"layout version {doc['version']} is not supported")
            return cls(
                hostname=str(doc["hostname"]),
                boot_mode=doc.get("boot_mode", "unknown"),
                version=LAYOUT_VERSION,
                disks=[_disk(d) for d in doc["disks"]],
                volume_groups=[_vg(v) for v in doc.get("volume_groups", [])],
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise FormatError(f"malformed layout: {exc!r}") from None


def _fs(doc: Any) -> Filesystem | None:
    return None if doc is None else Filesystem(**doc)


def _disk(doc: dict[str, Any]) -> Disk:
    parts = [Partition(**{**p, "filesystem": _fs(p.get("filesystem"))}) for p in doc["partitions"]]
    return Disk(**{**doc, "partitions": parts, "filesystem": _fs(doc.get("filesystem"))})


def _vg(doc: dict[str, Any]) -> VolumeGroup:
    return VolumeGroup(**{
        **doc,
        "pvs": [PhysicalVolume(**p) for p in doc["pvs"]],
        "lvs": [LogicalVolume(**{**lv, "filesystem": _fs(lv.get("filesystem"))})
                for lv in doc["lvs"]],
    })
