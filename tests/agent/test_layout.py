"""Layout capture on real partition tables (pyparted + sfdisk + blkid), no server needed."""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from cdpcore import runcmd
from cdpcore.layout import Filesystem, Layout
from hotcopy import capture as capture_mod
from hotcopy.capture import capture, parted_partitions
from hotcopy.errors import SourceError
from tests.loopdev import attached_loop

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


def test_an_empty_source_is_a_clear_error(tmp_path: Path) -> None:
    """It was sfdisk's failure to read it (exit 10)."""
    empty = tmp_path / "new.img"
    empty.touch()
    for source in (str(empty), "/dev/null"):
        with pytest.raises(SourceError) as err:
            capture([source], "web1")
        assert str(err.value) == (f"{source}: empty (0 bytes), nothing to protect: a drive "
                                  "without its medium, or an image file not written yet")


def test_loop_device_volumes_use_the_kernel_name(loop_device: str) -> None:
    layout, volumes = capture([loop_device], "web1")
    name = Path(loop_device).name
    disk = layout.disk(name)
    assert disk.disk_guid == images.DISK_GUID and disk.transport == "loop"
    assert [v.name for v in volumes] == [f"{name}:boot", f"{name}:p1", f"{name}:p2"]


def test_lvm_pv_in_an_image_file_is_copied_as_raw_partition_bytes(tmp_path: Path) -> None:
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


_IN_CLOSE_WRITE, _IN_CLOSE_NOWRITE = 0x08, 0x10


def _closes(path: str, action: Callable[[], object]) -> set[int]:
    """The inotify close events of `path` while `action` runs: udev re-probes a disk on
    every close of it after an open for writing (IN_CLOSE_WRITE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        assert libc.inotify_add_watch(fd, path.encode(), _IN_CLOSE_WRITE | _IN_CLOSE_NOWRITE) >= 0
        action()
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return set()
        masks = set()
        while data:
            _, mask, _, name_len = struct.unpack_from("iIII", data)
            masks.add(mask)
            data = data[16 + name_len:]
        return masks
    finally:
        os.close(fd)


@pytest.mark.parametrize("table", ["gpt", "msdos"])
def test_capture_never_opens_the_disk_for_writing(tmp_path: Path, table: str) -> None:
    """libparted opens a disk read-write (udev then probes it again); capture reads a copy
    of the table's sectors instead, and finds what pyparted finds on the disk itself."""
    img = make_image(tmp_path / "d.img", table)
    direct = parted_partitions(str(img))
    assert direct is not None
    with attached_loop(img) as dev:
        layouts: list[Layout] = []
        closes = _closes(dev, lambda: layouts.append(capture([dev], "web1")[0]))
        assert closes == {_IN_CLOSE_NOWRITE}  # read, and never opened for writing
    disk = layouts[0].disks[0]
    assert disk.table == direct[0]
    assert [(p.number, p.start, p.length, p.kind, p.flags) for p in disk.partitions] == [
        (p.number, p.start, p.length, p.kind, p.flags) for p in direct[1]]


def test_table_pyparted_cannot_read_is_copied_whole_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A GPT whose backup header is gone: sfdisk reads it, pyparted refuses it. The disk
    is copied whole, table included, and the agent says so."""
    img = make_image(tmp_path / "b.img", "gpt")
    with open(img, "r+b") as f:
        f.seek(-512, os.SEEK_END)
        f.write(bytes(512))
    layout, volumes = capture([str(img)], "web1")
    assert layout.disk("b.img").table is None
    assert [(v.name, v.offset, v.size) for v in volumes] == [
        ("b.img:whole", 0, images.DISK_MIB * MiB)]
    assert f"{img}: sfdisk reads a gpt partition table that pyparted cannot: the disk is " \
        "copied whole, table included" in caplog.text


@pytest.mark.parametrize(("container", "ebr"), [("5", "written"), ("f", "zeroed")])
def test_an_empty_extended_container_is_captured_with_the_partitions(
        tmp_path: Path, container: str, ebr: str) -> None:
    """An MBR extended container without logical partitions: sfdisk leaves its EBR, which
    lists nothing, out of --backup-pt-sectors, and libparted refused the table copy for the
    zeros there ("wrong signature 0"), so the disk used to be copied whole. sfdisk writes
    that EBR (the boot signature alone); other tools may not, and sfdisk reads an empty
    container either way. Its partitions are volumes of their own, the container recorded
    for the rescue to rebuild."""
    img = tmp_path / "e.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    runcmd.run(["sfdisk", "-q", str(img)], input=(
        f"label: dos\nlabel-id: {images.MBR_ID}\nstart=2048, size=20480, type=83\n"
        f"start=22528, size=40960, type={container}\n").encode())
    with open(img, "r+b") as f:
        f.seek(22528 * 512)
        assert f.read(512) == bytes(510) + b"\x55\xaa"  # sfdisk wrote an empty EBR
        if ebr == "zeroed":
            f.seek(22528 * 512)
            f.write(bytes(512))
    images.mkfs_ext4(img, 1 * MiB, 10 * MiB)
    layout, volumes = capture([str(img)], "web1")
    disk = layout.disk("e.img")
    assert (disk.table, disk.disk_guid, disk.volume) == ("msdos", images.MBR_ID, None)
    assert [(p.number, p.start, p.length, p.kind, p.mbr_type, p.role, p.volume)
            for p in disk.partitions] == [
        (1, 2048, 20480, "primary", 0x83, "data", "e.img:p1"),
        (2, 22528, 40960, "extended", int(container, 16), "extended", None)]
    fs = disk.partition(1).filesystem
    assert fs is not None and fs.uuid == images.FS_UUID
    assert [(v.name, v.offset, v.size) for v in volumes] == [
        ("e.img:boot", 0, 1 * MiB), ("e.img:p1", 1 * MiB, 10 * MiB)]
    if ebr == "written":  # what pyparted reads on the disk itself
        direct = parted_partitions(str(img))
        assert direct is not None
        assert [(p.number, p.start, p.length, p.kind, p.flags) for p in disk.partitions] \
            == [(p.number, p.start, p.length, p.kind, p.flags) for p in direct[1]]


def test_disk_of_4096_byte_sectors_records_its_sectors(tmp_path: Path) -> None:
    """libparted reads a file as 512-byte sectors, so a 4Kn disk is read by pyparted
    itself: partitions in 4096-byte sectors, as sfdisk sees them."""
    img = tmp_path / "4k.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    with attached_loop(img, "--sector-size", "4096") as dev:
        runcmd.run(["sfdisk", "-q", dev], input=b"label: gpt\nstart=256, size=4096\n"
                                                 b"start=4352, size=8192\n")
        layout, volumes = capture([dev], "web1")
        disk = layout.disks[0]
        assert (disk.table, disk.logical_sector_size) == ("gpt", 4096)
        assert [(p.number, p.start, p.length) for p in disk.partitions] == [
            (1, 256, 4096), (2, 4352, 8192)]
        name = Path(dev).name
        assert [(v.name, v.offset, v.size) for v in volumes] == [
            (f"{name}:boot", 0, 1 * MiB), (f"{name}:p1", 1 * MiB, 16 * MiB),
            (f"{name}:p2", 17 * MiB, 32 * MiB)]


def test_sfdisk_without_backup_pt_sectors_falls_back_to_pyparted_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """An sfdisk that predates --backup-pt-sectors (a stand-in: an older util-linux
    cannot be installed here beside Debian 12's; this one refuses the option as getopt
    does and passes every other call to the real sfdisk): the layout is the same, read
    by pyparted itself, and the agent says why."""
    img = make_image(tmp_path / "d.img", "gpt")
    expected = capture([str(img)], "web1")
    real = runcmd.run_text(["sh", "-c", "command -v sfdisk"]).strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sfdisk").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --backup-pt-sectors ]; then\n'
        "  echo \"sfdisk: unrecognized option '--backup-pt-sectors'\" >&2\n"
        "  echo \"Try 'sfdisk --help' for more information.\" >&2\n"
        "  exit 1\n"
        "fi\n"
        f'exec {real} "$@"\n')
    (bin_dir / "sfdisk").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert capture([str(img)], "web1") == expected
    assert f"{img}: this sfdisk has no --backup-pt-sectors (older util-linux): pyparted " \
        "reads the disk itself, which opens it read-write" in caplog.text


def test_a_boot_partition_is_recorded_as_boot(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """/boot keeps its size when a restore grows the rest (rescue.resize), so capture must
    say which partition it is: the filesystem mounted at /boot on the running system, or
    a partition typed XBOOTLDR. It is copied like any data partition."""
    path = make_image(tmp_path / "b.img", "gpt")
    monkeypatch.setattr(capture_mod, "boot_uuid", lambda: images.FS_UUID)
    layout, volumes = capture([str(path)])
    assert [(p.number, p.role, p.volume) for p in layout.disks[0].partitions] == [
        (1, "esp", "b.img:p1"), (2, "boot", "b.img:p2"), (3, "swap", None)]
    assert "b.img:p2" in [v.name for v in volumes]

    monkeypatch.setattr(capture_mod, "boot_uuid", lambda: None)
    assert capture([str(path)])[0].disks[0].partitions[1].role == "data"
    runcmd.run(["sfdisk", "-q", "--part-type", str(path), "2", capture_mod.XBOOTLDR_GUID])
    assert capture([str(path)])[0].disks[0].partitions[1].role == "boot"


def test_an_esp_mounted_at_boot_stays_an_esp() -> None:
    """systemd-boot setups mount the ESP at /boot: it is still restored as the ESP."""
    fs = Filesystem(type="vfat", uuid="abcd-1234")
    assert capture_mod._role(fs, capture_mod.ESP_GUID, None, [], "primary",
                             "abcd-1234") == "esp"
    assert capture_mod._role(fs, None, 0x83, [], "primary", "abcd-1234") == "boot"
    assert capture_mod._role(fs, None, 0x83, [], "primary", "other") == "data"
