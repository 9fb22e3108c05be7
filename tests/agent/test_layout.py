"""Layout capture on real partition tables (pyparted + sfdisk + blkid), no server needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotcopy.capture import capture
from hotcopy.errors import SourceError

from . import images
from .images import MiB, make_image


def test_gpt_layout_records_exact_guids_types_and_filesystems(tmp_path: Path) -> None:
    img = make_image(tmp_path / "g.img", "gpt")
    layout, volumes = capture([str(img)], "web1")
    disk = layout.disk("g.img")
    assert (disk.table, disk.disk_guid, disk.size, disk.transport) == (
        "gpt", images.DISK_GUID, images.DISK_MIB * MiB, "file")
    assert [(p.number, p.start, p.length, p.guid, p.type_guid, p.name, p.role, p.volume)
            for p in disk.partitions] == [
        (1, 2048, 8192, images.PART_GUIDS[0], images.ESP_GUID, "esp", "esp", "g.img:p1"),
        (2, 10240, 49152, images.PART_GUIDS[1], images.LINUX_GUID, "root", "data", "g.img:p2"),
        (3, 59392, 4096, images.PART_GUIDS[2], images.SWAP_GUID, "swap", "swap", None),
    ]
    fs = disk.partition(2).filesystem
    assert fs is not None and (fs.type, fs.uuid, fs.label) == ("ext4", images.FS_UUID, "rootfs")
    assert disk.boot_area_volume == "g.img:boot"
    # Swap is recorded but not copied; the boot area spans up to the first partition.
    assert [(v.name, v.offset, v.size) for v in volumes] == [
        ("g.img:boot", 0, 1 * MiB), ("g.img:p1", 1 * MiB, 4 * MiB), ("g.img:p2", 5 * MiB, 24 * MiB)]


def test_mbr_layout_records_disk_id_types_and_logical_partitions(tmp_path: Path) -> None:
    img = make_image(tmp_path / "m.img", "msdos")
    layout, volumes = capture([str(img)], "web1")
    disk = layout.disk("m.img")
    assert (disk.table, disk.disk_guid) == ("msdos", images.MBR_ID)
    assert [(p.number, p.kind, p.mbr_type, p.role, p.volume) for p in disk.partitions] == [
        (1, "primary", 0x83, "data", "m.img:p1"),
        (2, "extended", 0x05, "extended", None),
        (5, "logical", 0x82, "swap", None),
        (6, "logical", 0x83, "data", "m.img:p6"),
    ]
    assert [v.name for v in volumes] == ["m.img:boot", "m.img:p1", "m.img:p6"]


def test_disk_without_table_is_one_whole_volume(tmp_path: Path) -> None:
    img = tmp_path / "raw.img"
    img.write_bytes(b"\x01" * MiB)
    layout, volumes = capture([str(img)], "web1")
    assert layout.disk("raw.img").volume == "raw.img:whole"
    assert [(v.name, v.offset, v.size) for v in volumes] == [("raw.img:whole", 0, MiB)]


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nosuch\.img: no such device or file"):
        capture([str(tmp_path / "nosuch.img")], "web1")


def test_loop_device_volumes_use_the_kernel_name(loop_device: str) -> None:
    layout, volumes = capture([loop_device], "web1")
    name = Path(loop_device).name
    disk = layout.disk(name)
    assert disk.disk_guid == images.DISK_GUID and disk.transport == "loop"
    assert [v.name for v in volumes] == [f"{name}:boot", f"{name}:p1", f"{name}:p2"]


def test_lvm_pv_in_an_image_file_is_copied_as_raw_partition_bytes(tmp_path: Path) -> None:
    from cdpcore import runcmd

    img = make_image(tmp_path / "l.img", "gpt")
    runcmd.run(["sfdisk", "-q", "--part-type", str(img), "2",
                "e6d6d379-f507-44c2-a23c-238f2a3df928"])
    layout, volumes = capture([str(img)], "web1")
    part = layout.disk("l.img").partition(2)
    # The host's LVM cannot see inside an image file: rather than leave its LVs out, the
    # whole PV (metadata included) is a volume.
    assert (part.role, part.volume) == ("lvm_pv", "l.img:p2")
    assert ("l.img:p2", 5 * MiB, 24 * MiB) in [(v.name, v.offset, v.size) for v in volumes]
    assert layout.volume_groups == []


def test_whole_local_disks_are_the_default_sources() -> None:
    from hotcopy.capture import pick_local_disks

    doc = {"blockdevices": [
        {"name": "sda", "path": "/dev/sda", "type": "disk", "ro": False, "rm": False,
         "size": 500107862016},
        {"name": "nvme0n1", "path": "/dev/nvme0n1", "type": "disk", "ro": "0", "rm": "0",
         "size": "1000204886016"},
        {"name": "sdb", "path": "/dev/sdb", "type": "disk", "ro": False, "rm": True,
         "size": 32010928128},  # a USB stick
        {"name": "sr0", "path": "/dev/sr0", "type": "rom", "ro": False, "rm": True, "size": 1},
        {"name": "loop0", "path": "/dev/loop0", "type": "loop", "ro": True, "rm": False,
         "size": 4096},
        {"name": "zram0", "path": "/dev/zram0", "type": "disk", "ro": False, "rm": False,
         "size": 4294967296},
        {"name": "sdc", "path": "/dev/sdc", "type": "disk", "ro": True, "rm": False,
         "size": 1},  # write-protected
        {"name": "sdd", "path": "/dev/sdd", "type": "disk", "ro": False, "rm": False,
         "size": 0},  # a card reader with no card
    ]}
    assert pick_local_disks(doc) == ["/dev/nvme0n1", "/dev/sda"]
