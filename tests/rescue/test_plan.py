"""Pure planning: point choice, disk mapping, resizing and refusals (no I/O)."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

import pytest

from cdpcore.errors import FormatError, NotFoundError, SafetyError, UsageError
from cdpcore.layout import (
    Disk,
    Filesystem,
    Layout,
    LogicalVolume,
    Partition,
    PhysicalVolume,
    VolumeGroup,
)
from cdpcore.manifest import VolumeRecord
from cdpcore.points import select_point
from rescue.bootloader import boot_mounts, parse_fstab
from rescue.discover import LocalDisk
from rescue.engine import recheck_targets
from rescue.mapping import map_disks, parse_maps
from rescue.plan import Plan, build_plan
from rescue.resize import fit, required_size
from rescue.tables import (
    backup_sectors,
    first_usable_sector,
    gpt_attributes,
    gpt_entries,
    listed_partitions,
    rewritten_by_table,
)

ZERO_ROOT = "0" * 64
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass
class P:
    point_id: str
    created: float


def test_select_point_latest_prefix_and_time() -> None:
    pts = [P("aaaa" + "0" * 28, 1000.0), P("aaaa" + "1" * 28, 2000.0), P("b" * 32, 3000.0)]
    assert select_point(pts, "latest").created == 3000.0
    assert select_point(pts, "bbbb").point_id == "b" * 32
    with pytest.raises(UsageError, match="ambiguous"):
        select_point(pts, "aaaa")
    with pytest.raises(NotFoundError, match="no recovery point of host 'h' has an ID"):
        select_point(pts, "cccc", "h")
    import time
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(2500))
    assert select_point(pts, stamp).created == 2000.0
    early = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(500))
    with pytest.raises(NotFoundError, match="at or before"):
        select_point(pts, early)
    with pytest.raises(UsageError, match="cannot read point choice"):
        select_point(pts, "yesterday")
    with pytest.raises(NotFoundError, match="there are no recovery points"):
        select_point([], "latest")


def gpt_disk(name: str = "vda", size: int = 64 * MIB) -> Disk:
    parts = [
        Partition(1, 2048, 16384, role="esp", type_guid="c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
                  guid="11111111-1111-4111-8111-111111111111", name="EFI",
                  volume=f"{name}:p1"),
        Partition(2, 18432, 16384, role="swap"),
        Partition(3, 34816, 40960, volume=f"{name}:p3"),
        Partition(4, 75776, 40960, volume=f"{name}:p4"),
    ]
    return Disk(name=name, size=size, table="gpt", partitions=parts, serial="S1",
                model="M", boot_area_volume=f"{name}:boot")


def local(path: str, size: int, **kw: object) -> LocalDisk:
    return LocalDisk(path=path, name=path.rsplit("/", 1)[-1], size=size, **kw)  # type: ignore[arg-type]


def test_fit_same_grow_last_proportional_and_too_small() -> None:
    disk = gpt_disk()
    assert [(p.start, p.length) for p in fit(disk, 128 * MIB, "same", "t").partitions] == \
        [(p.start, p.length) for p in disk.partitions]
    last = fit(disk, 128 * MIB, "grow-last", "t").partitions
    assert last[3].start == 75776 and last[3].start + last[3].length - 1 == 262144 - 34
    prop = fit(disk, 128 * MIB, "proportional", "t").partitions
    assert (prop[0].start, prop[0].length) == (2048, 16384)  # ESP fixed
    assert prop[1].length == 16384  # swap fixed
    assert prop[2].length == prop[3].length > 40960  # equal data partitions grow alike
    assert prop[3].start == prop[2].start + prop[2].length
    assert prop[3].start + prop[3].length <= 262144 - 33
    assert all(p.start % 2048 == 0 for p in prop)
    with pytest.raises(SafetyError) as err:
        fit(disk, 32 * MIB, "same", "/dev/sdz")
    assert str(err.value) == (
        "target /dev/sdz is too small for source disk vda: it has 32.0 MiB (33554432 "
        "bytes), the layout needs at least 57.0 MiB (59785728 bytes)")


def test_proportional_does_not_move_a_bios_boot_partition() -> None:
    """GRUB's boot code in the MBR holds the absolute sector of its core image in the
    BIOS-boot partition: a data partition before one does not grow, so it stays where it
    was; those after it grow."""
    disk = Disk(name="vda", size=64 * MIB, table="gpt", partitions=[
        Partition(1, 2048, 16384, volume="vda:p1"),
        Partition(2, 18432, 2048, role="bios_boot", volume="vda:p2"),
        Partition(3, 20480, 40960, volume="vda:p3"),
    ])
    prop = fit(disk, 128 * MIB, "proportional", "t").partitions
    assert [(p.start, p.length) for p in prop[:2]] == [(2048, 16384), (18432, 2048)]
    assert prop[2].start == 20480 and prop[2].start + prop[2].length > 40960 + 20480


def test_a_4kn_gpt_disk_fits_an_identical_disk_and_grows_to_its_backup() -> None:
    """4096-byte sectors: the GPT's backup takes 1 + 4 sectors, not the 33 of 512-byte
    disks (a layout ending at N-6, as fdisk and sgdisk make, used to be refused)."""
    sectors = GIB // 4096
    disk = Disk(name="sda", size=GIB, logical_sector_size=4096, physical_sector_size=4096,
                table="gpt", partitions=[Partition(1, 256, sectors - 6 - 256 + 1)])
    assert required_size(disk) == GIB
    assert fit(disk, GIB, "same", "t").partitions[0].length == sectors - 6 - 256 + 1
    grown = fit(disk, 2 * GIB, "grow-last", "t").partitions[0]
    assert grown.start + grown.length - 1 == 2 * sectors - 6
    assert rewritten_by_table(disk) == [(440, 512), (4096, 6 * 4096)]
    assert rewritten_by_table(gpt_disk()) == [(440, 512), (512, 34 * 512)]


def test_a_gpt_numbering_a_partition_past_128_gets_the_entries_it_needs() -> None:
    """Partition 200 is entry 200: the GPT a restore writes holds 200 entries (50 sectors
    of 512 bytes; 224 in 7 sectors of 4096, filling the last one), which move the first
    usable sector and take as many at the end for the backup: the smallest target, the
    sector grow-last grows to and the bytes the new table rewrites follow. A partition
    inside the new table is refused before anything is written."""
    disk = gpt_disk()
    disk.partitions[3].number = 200
    sectors = 128 * MIB // 512
    assert (gpt_entries(disk), first_usable_sector(disk), backup_sectors(disk)) == \
        (200, 52, 51)
    assert required_size(disk) == (75776 + 40960 + 51) * 512
    grown = fit(disk, 128 * MIB, "grow-last", "t").partitions[3]
    assert (grown.number, grown.start, grown.start + grown.length - 1) == \
        (200, 75776, sectors - 1 - 51)
    assert rewritten_by_table(disk) == [(440, 512), (512, 52 * 512)]
    assert (gpt_entries(gpt_disk()), first_usable_sector(gpt_disk())) == (128, 34)
    disk.partitions[3].number = 201  # 51 sectors of 4 entries
    assert (gpt_entries(disk), first_usable_sector(disk)) == (204, 53)
    kn = Disk(name="sda", size=GIB, logical_sector_size=4096, table="gpt",
              partitions=[Partition(200, 256, 1024)])
    assert (gpt_entries(kn), first_usable_sector(kn), backup_sectors(kn)) == (224, 9, 8)
    assert rewritten_by_table(kn) == [(440, 512), (4096, 9 * 4096)]
    assert required_size(kn) == (256 + 1024 + 8) * 4096
    # sfdisk's `table-length: 4` lets a partition start at sector 3
    small = Disk(name="vdb", size=8 * MIB, table="gpt", partitions=[Partition(1, 3, 100)])
    with pytest.raises(FormatError) as err:
        fit(small, 8 * MIB, "same", "t")
    assert str(err.value) == ("source disk vdb: partition 1 starts at sector 3, inside the "
                              "128-entry GPT a restore writes (sectors 0-33)")


def test_grow_last_on_mbr_grows_the_last_logical_and_stays_within_32_bit_sectors() -> None:
    parts = [Partition(1, 2048, 8192, mbr_type=0x83),
             Partition(2, 10240, 120832, kind="extended", mbr_type=0x05),
             Partition(5, 12288, 118784, kind="logical", mbr_type=0x83)]
    disk = Disk(name="sda", size=64 * MIB, table="msdos", partitions=parts)
    out = {p.number: p for p in fit(disk, 128 * MIB, "grow-last", "t").partitions}
    assert out[5].start + out[5].length == out[2].start + out[2].length == 262144
    assert out[1].length == 8192
    # 3 TiB: an MBR partition cannot pass 2^32 sectors (2 TiB at 512 bytes)
    out = {p.number: p for p in fit(disk, 3 * 2**40, "grow-last", "t").partitions}
    assert out[5].start + out[5].length == out[2].start + out[2].length == 2**32


def test_mapping_by_serial_then_size_and_refusals() -> None:
    src = [gpt_disk()]
    a = local("/dev/sda", 64 * MIB, serial="X", model="M")
    b = local("/dev/sdb", 64 * MIB, serial="S1", model="Z")
    assert map_disks(src, [a, b], {})[0].target is b
    assert map_disks(src, [a, b], {})[0].reason == "same SERIAL S1"
    c = local("/dev/sdc", 64 * MIB, model="M")
    with pytest.raises(SafetyError, match="equally plausible targets"):
        map_disks(src, [a, c], {})  # same size and model: never guess
    busy = local("/dev/sdd", 64 * MIB, serial="S1", busy=["/dev/sdd1 is mounted on /"])
    loop = local("/dev/loop3", 64 * MIB, serial="S1", transport="loop")
    with pytest.raises(SafetyError, match=r"the local disk with its SERIAL S1 cannot be a "
                                          r"target \(/dev/sdd: /dev/sdd1 is mounted on /"):
        map_disks(src, [busy, loop], {})
    with pytest.raises(UsageError, match="no local disk matches source disk vda"):
        map_disks(src, [local("/dev/sde", 32 * MIB)], {})
    assert map_disks(src, [a, b], {"vda": a})[0].reason == "--map"
    with pytest.raises(UsageError, match="names source disk 'vdz'"):
        map_disks(src, [a], {"vdz": a})
    assert parse_maps(["vda=/dev/sdb"]) == {"vda": "/dev/sdb"}
    with pytest.raises(UsageError, match="expected SOURCE=TARGET"):
        parse_maps(["vda"])


def test_the_source_disk_busy_or_read_only_is_not_replaced_by_a_disk_of_its_size() -> None:
    """The disk with the source's serial (or WWN) is here but mounted, read-only or taken:
    another disk of the same size and model is a different disk, never its stand-in."""
    src = [gpt_disk()]
    twin = local("/dev/sdb", 64 * MIB, serial="OTHER", model="M")
    cases = [(local("/dev/sda", 64 * MIB, serial="S1", model="M",
                    busy=["/dev/sda1 is mounted on /mnt"]), "/dev/sda1 is mounted on /mnt"),
             (local("/dev/sda", 64 * MIB, serial="S1", model="M", read_only=True),
              "it is read-only")]
    for own, why in cases:
        with pytest.raises(SafetyError, match=f"SERIAL S1 cannot be a target \\(/dev/sda: "
                                              f"{why}\\); refusing to pick another disk"):
            map_disks(src, [own, twin], {})
    by_wwn = gpt_disk()
    by_wwn.wwn = "0x5000c500a1b2c3d4"
    own = local("/dev/sda", 64 * MIB, wwn="0x5000c500a1b2c3d4", model="M",
                busy=["/dev/sda holds the rescue medium"])
    with pytest.raises(SafetyError, match="WWN 0x5000c500a1b2c3d4 cannot be a target"):
        map_disks([by_wwn], [own, twin], {})
    # Two source disks with one serial (cloned VMs): the second gets no stand-in either.
    two = [gpt_disk("vda"), gpt_disk("vdb")]
    a = local("/dev/sda", 64 * MIB, serial="S1", model="M")
    with pytest.raises(SafetyError, match="already the target of source disk vda"):
        map_disks(two, [a, twin], {})
    # --map giving that disk to another source repurposes it on purpose: size decides.
    got = map_disks(two, [a, twin], {"vdb": a})
    assert [(m.source, m.target.path, m.reason) for m in got] == [
        ("vda", "/dev/sdb", "same size and model"), ("vdb", "/dev/sda", "--map")]


def test_two_paths_to_one_lun_are_never_targets_of_two_source_disks() -> None:
    """Without multipathd, a SAN LUN shows as two disks of one WWN: mapping one source
    onto each would write both onto the same disk."""
    two = [gpt_disk("vda"), gpt_disk("vdb")]
    two[1].serial = "S2"
    path1 = local("/dev/sdb", 64 * MIB, wwn="0x600a0b80001", serial="LUN1", model="M")
    path2 = local("/dev/sdc", 64 * MIB, wwn="0x600a0b80001", serial="LUN1", model="M")
    with pytest.raises(SafetyError, match=r"targets /dev/sdb \(for source disk vda\) and "
                                          r"/dev/sdc \(for vdb\) have one WWN 0x600a0b80001"):
        map_disks(two, [], {"vda": path1, "vdb": path2})
    # the second source found by its size on the other path of the LUN the first is given
    with pytest.raises(SafetyError, match="they are one disk seen twice"):
        map_disks(two, [path1, path2], {"vda": path1})
    other = local("/dev/sdd", 64 * MIB, wwn="0x600a0b80002", model="M")
    assert [m.target.path for m in map_disks(two, [], {"vda": path1, "vdb": other})] == [
        "/dev/sdb", "/dev/sdd"]


def volumes(disk: Disk) -> list[VolumeRecord]:
    names = [disk.boot_area_volume] + [p.volume for p in disk.partitions if p.volume]
    return [VolumeRecord(str(n), MIB, 16384, ZERO_ROOT, 0) for n in names]


def test_plan_actions_refusals_and_json_round_trip() -> None:
    disk = gpt_disk()
    layout = Layout(hostname="h", disks=[disk])
    target = local("/tmp/t.img", 128 * MIB, is_file=True)
    matches = map_disks([disk], [], {"vda": target})
    plan = build_plan("h", "f" * 32, 1.0, layout, volumes(disk), matches, resize="grow-last",
                      verify="read-back")
    types = [a.type for a in plan.actions]
    assert types[:3] == ["wipe", "stream", "partition_table"]  # boot area before the table
    assert plan.actions[1].volume == "vda:boot"
    swap = next(a for a in plan.actions if a.type == "swap")
    assert swap.offset == 18432 * 512
    p4 = next(a for a in plan.actions if a.volume == "vda:p4" and a.type == "stream")
    assert p4.offset == 75776 * 512
    assert types.count("verify") == 4
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.fingerprint() == plan.fingerprint()
    mounted = local("/dev/sdb", 128 * MIB, busy=["/dev/sdb2 is mounted on /mnt"])
    with pytest.raises(SafetyError, match="refusing target /dev/sdb for source disk vda: "
                                          "/dev/sdb2 is mounted on /mnt"):
        build_plan("h", "f" * 32, 1.0, layout, volumes(disk),
                   map_disks([disk], [], {"vda": mounted}))
    medium = local("/dev/sdc", 128 * MIB, busy=["/dev/sdc holds the rescue medium"])
    with pytest.raises(SafetyError, match="holds the rescue medium"):
        build_plan("h", "f" * 32, 1.0, layout, volumes(disk),
                   map_disks([disk], [], {"vda": medium}))


def test_a_thin_lv_is_streamed_without_provisioning_its_zeros() -> None:
    disk = gpt_disk()
    disk.partitions[3].volume = None  # partition 4: the PV
    vg = VolumeGroup("vg0", "VGUUID", 4 * MIB, pvs=[PhysicalVolume("PVUUID", "vda4", MIB, MIB)],
                     lvs=[LogicalVolume("root", "L1", 4 * MIB, volume="lvm:vg0/root"),
                          LogicalVolume("pool", "L2", 8 * MIB, segtype="thin-pool"),
                          LogicalVolume("thin", "L3", 4 * MIB, segtype="thin", pool="pool",
                                        volume="lvm:vg0/thin")])
    layout = Layout(hostname="h", disks=[disk], volume_groups=[vg])
    vols = volumes(disk) + [VolumeRecord(n, 4 * MIB, 16384, ZERO_ROOT, 0)
                            for n in ("lvm:vg0/root", "lvm:vg0/thin")]
    target = local("/dev/sdz", 64 * MIB)
    plan = build_plan("h", "f" * 32, 1.0, layout, vols, map_disks([disk], [], {"vda": target}))
    streams = {a.target: a.params for a in plan.actions if a.type == "stream"}
    assert streams["/dev/vg0/thin"] == {"unprovisioned": True}
    assert streams["/dev/vg0/root"] == {}
    lvm = next(a for a in plan.actions if a.type == "lvm")
    assert lvm.params == {"vg": "vg0", "pv_devices": {"PVUUID": "/dev/sdz4"}}


def test_a_whole_disk_pv_named_like_a_partition_of_another_disk_is_found_on_its_disk() -> None:
    """nvme0n11 (namespace 11, a whole-disk PV) is not partition 1 of nvme0n1 (that is
    nvme0n1p1): its PV must be made on nvme0n11's target, not over nvme0n1's ESP."""
    first = gpt_disk("nvme0n1")
    first.serial = None
    pv_disk = Disk(name="nvme0n11", size=64 * MIB, table=None, partitions=[])
    vg = VolumeGroup("vg0", "VGUUID", 4 * MIB,
                     pvs=[PhysicalVolume("PVUUID", "nvme0n11", 64 * MIB, MIB)],
                     lvs=[LogicalVolume("root", "L1", 4 * MIB, volume="lvm:vg0/root")])
    layout = Layout(hostname="h", disks=[first, pv_disk], volume_groups=[vg])
    vols = [*volumes(first), VolumeRecord("lvm:vg0/root", 4 * MIB, 16384, ZERO_ROOT, 0)]
    plan = build_plan("h", "f" * 32, 1.0, layout, vols,
                      map_disks(layout.disks, [], {"nvme0n1": local("/dev/sdb", 64 * MIB),
                                                   "nvme0n11": local("/dev/sdc", 64 * MIB)}))
    lvm = next(a for a in plan.actions if a.type == "lvm")
    assert lvm.params["pv_devices"] == {"PVUUID": "/dev/sdc"}
    # and a partition PV of a disk whose name ends in a digit is found as the kernel names it
    vg.pvs = [PhysicalVolume("PVUUID", "nvme0n1p4", MIB, MIB)]
    first.partitions[3].volume = None
    plan = build_plan("h", "f" * 32, 1.0, layout, vols[:-2] + vols[-1:],
                      map_disks(layout.disks, [], {"nvme0n1": local("/dev/sdb", 64 * MIB),
                                                   "nvme0n11": local("/dev/sdc", 64 * MIB)}))
    lvm = next(a for a in plan.actions if a.type == "lvm")
    assert lvm.params["pv_devices"] == {"PVUUID": "/dev/sdb4"}


def test_a_saved_plan_making_a_pv_outside_its_disks_is_refused() -> None:
    """A saved plan is checked again before it writes: its LVM action's PV devices too
    (pvcreate writes them), not only each action's target."""
    disk = gpt_disk()
    disk.partitions[3].volume = None  # partition 4: the PV
    vg = VolumeGroup("vg0", "VGUUID", 4 * MIB, pvs=[PhysicalVolume("PVUUID", "vda4", MIB, MIB)],
                     lvs=[LogicalVolume("root", "L1", 4 * MIB, volume="lvm:vg0/root")])
    layout = Layout(hostname="h", disks=[disk], volume_groups=[vg])
    vols = [*volumes(disk), VolumeRecord("lvm:vg0/root", 4 * MIB, 16384, ZERO_ROOT, 0)]
    plan = build_plan("h", "f" * 32, 1.0, layout, vols,
                      map_disks([disk], [], {"vda": local("/dev/nonexistent-sdz", 64 * MIB)}))
    with pytest.raises(UsageError, match="does not exist"):
        recheck_targets(plan)  # its own PV device passes: on to describing the disk
    lvm = next(a for a in plan.actions if a.type == "lvm")
    lvm.params["pv_devices"] = {"PVUUID": "/dev/sdq4"}
    edited = Plan.from_json(plan.to_json())
    with pytest.raises(SafetyError, match="plan action lvm:vg0 makes physical volumes on "
                                          "/dev/sdq4, which are not on a target disk"):
        recheck_targets(edited)


def test_disks_without_serial_that_swapped_names_are_told_apart_by_their_port(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two same-size disks without serial or WWN whose kernel names swapped between
    planning and writing (another boot enumerated them in another order): where each is
    attached (the sysfs device path, what /dev/disk/by-path names) still tells them
    apart, and the saved plan is refused; a plan without it (a loop device) is not."""
    disk = gpt_disk()
    layout = Layout(hostname="h", disks=[disk])
    port = "/sys/devices/pci0000:00/0000:00:1f.2/ata{}/host{}/target{}:0:0/{}:0:0:0"
    planned = local("/dev/sdb", 64 * MIB, hardware=port.format(2, 1, 1, 1))
    plan = Plan.from_json(build_plan("h", "f" * 32, 1.0, layout, volumes(disk),
                                     map_disks([disk], [], {"vda": planned})).to_json())
    now = local("/dev/sdb", 64 * MIB, hardware=port.format(1, 0, 0, 0))  # was /dev/sda
    monkeypatch.setattr("rescue.engine.describe_target", lambda path: now)
    with pytest.raises(SafetyError) as err:
        recheck_targets(plan)
    assert str(err.value) == (f"target /dev/sdb is not the disk the plan was made for: it is "
                              f"attached at {now.hardware}, the plan's disk at "
                              f"{planned.hardware} (disk names can change between boots): "
                              "plan again")
    now.hardware = planned.hardware
    recheck_targets(plan)
    plan.disks[0].target.hardware = now.hardware = None
    recheck_targets(plan)


def test_partitioned_4096_byte_sector_disk_is_refused_for_an_image_file() -> None:
    """libparted writes an image file's table in 512-byte sectors while the data would
    go where the 4096-byte sectors put it: refused before anything is written. The same
    disk onto a 4096-byte-sector device plans, as does a table-less one onto a file."""
    disk = gpt_disk(size=512 * MIB)
    disk.logical_sector_size = disk.physical_sector_size = 4096
    layout = Layout(hostname="h", disks=[disk])
    image = local("/tmp/t.img", 512 * MIB, is_file=True)
    with pytest.raises(SafetyError) as err:
        build_plan("h", "f" * 32, 1.0, layout, volumes(disk),
                   map_disks([disk], [], {"vda": image}))
    assert str(err.value) == (
        "target /tmp/t.img is an image file, which partition tools read as 512-byte "
        "sectors; source disk vda had 4096-byte sectors: restore onto a disk of that sector "
        "size, or attach the file as one (losetup --sector-size 4096) and restore onto the "
        "loop device")
    native = local("/dev/sdb", 512 * MIB, logical_sector_size=4096)
    plan = build_plan("h", "f" * 32, 1.0, layout, volumes(disk),
                      map_disks([disk], [], {"vda": native}))
    p3 = next(a for a in plan.actions if a.volume == "vda:p3" and a.type == "stream")
    assert p3.offset == 34816 * 4096
    whole = Disk(name="vdb", size=MIB, logical_sector_size=4096, volume="vdb:whole")
    build_plan("h", "f" * 32, 1.0, Layout(hostname="h", disks=[whole]),
               [VolumeRecord("vdb:whole", MIB, 16384, ZERO_ROOT, 0)],
               map_disks([whole], [], {"vdb": local("/tmp/w.img", MIB, is_file=True)}))
    # a table-less disk onto a device of another sector size: its filesystem, not a table
    with pytest.raises(SafetyError) as err:
        build_plan("h", "f" * 32, 1.0, Layout(hostname="h", disks=[whole]),
                   [VolumeRecord("vdb:whole", MIB, 16384, ZERO_ROOT, 0)],
                   map_disks([whole], [], {"vdb": local("/dev/sdc", MIB)}))
    assert str(err.value) == ("target /dev/sdc has 512-byte sectors, source disk vdb had 4096: "
                              "a filesystem made on one sector size may not mount on the other")


def test_grow_fs_and_bootloader_actions() -> None:
    disk = gpt_disk()
    disk.partition(4).filesystem = Filesystem("ext4", "u4", "root")
    disk.partition(3).filesystem = Filesystem("vfat", "u3")
    layout = Layout(hostname="h", boot_mode="uefi", disks=[disk])
    dev = local("/dev/sdb", 128 * MIB)
    plan = build_plan("h", "f" * 32, 1.0, layout, volumes(disk),
                      map_disks([disk], [], {"vda": dev}), resize="proportional",
                      verify="read-back", reinstall_bootloader=True)
    grow = [a for a in plan.actions if a.type == "grow_fs"]
    # p3 and p4 both grew; only ext4 can be grown here, vfat gets a note.
    assert [(a.volume, a.params["fstype"]) for a in grow] == [("vda:p4", "ext4")]
    assert any("partition 3: vfat filesystem not grown" in n for n in plan.notes)
    types = [a.type for a in plan.actions]
    # Growing rewrites superblocks: after every read-back; the boot loader goes last.
    assert types.index("grow_fs") > max(i for i, t in enumerate(types) if t == "verify")
    last = plan.actions[-1]
    assert (last.type, last.target) == ("bootloader", "/dev/sdb")
    assert last.params == {"boot_mode": "uefi", "candidates": ["/dev/sdb4"],
                           "devices": ["/dev/sdb1", "/dev/sdb3", "/dev/sdb4"]}
    same = build_plan("h", "f" * 32, 1.0, layout, volumes(disk),
                      map_disks([disk], [], {"vda": local("/dev/sdc", 64 * MIB)}))
    assert not [a for a in same.actions if a.type in ("grow_fs", "bootloader")]
    with pytest.raises(UsageError) as err:
        build_plan("h", "f" * 32, 1.0, layout, volumes(disk),
                   map_disks([disk], [], {"vda": local("/tmp/x.img", 64 * MIB, is_file=True)}),
                   reinstall_bootloader=True)
    assert str(err.value) == ("--reinstall-bootloader needs block-device targets (it mounts "
                              "partitions and LVs by their device nodes): /tmp/x.img is an "
                              "image file")


def test_fstab_boot_mounts() -> None:
    text = ("# /etc/fstab\nUUID=aaaa / ext4 errors=remount-ro 0 1\n\n"
            "UUID=bbbb /boot/efi vfat umask=0077 0 1\nLABEL=boot /boot/ ext4 defaults 0 2\n"
            "/dev/mapper/vg-swap none swap sw 0 0\nshort line\n")
    entries = parse_fstab(text)
    assert [e.mountpoint for e in entries] == ["/", "/boot/efi", "/boot/", "none"]
    assert [(e.spec, e.mountpoint) for e in boot_mounts(entries)] == [
        ("LABEL=boot", "/boot/"), ("UUID=bbbb", "/boot/efi")]


def test_gpt_attributes_are_read_from_the_entry_array() -> None:
    """Bits sfdisk can set come back named as it names them; reserved bits alone (3-47)
    and unused entries give nothing; no GPT header, no attributes."""
    area = bytearray(34 * 512)
    area[512:520] = b"EFI PART"
    struct.pack_into("<QII", area, 512 + 72, 2, 128, 128)
    for i, bits in enumerate([1 << 5, 1 | 1 << 48 | 1 << 63, 0]):
        entry = 1024 + i * 128
        area[entry:entry + 16] = b"\x01" * 16
        area[entry + 16:entry + 32] = uuid.UUID(int=i + 1).bytes_le
        struct.pack_into("<Q", area, entry + 48, bits)
    assert gpt_attributes(bytes(area), 512) == {
        str(uuid.UUID(int=2)): "RequiredPartition GUID:48,63"}
    assert gpt_attributes(bytes(512 * 34), 512) == {}


def test_an_old_tables_partitions_are_listed_in_bytes_and_clipped_to_the_disk() -> None:
    """The partitions a wipe zeroes the ends of: in the dump's sector size, and never past
    the disk (a table copied from a larger disk); none without partitions."""
    dump = {"partitiontable": {"label": "gpt", "sectorsize": 4096, "partitions": [
        {"node": "/dev/sdb1", "start": 256, "size": 256},
        {"node": "/dev/sdb2", "start": 512, "size": 10**9},
        {"node": "/dev/sdb3", "start": 10**9, "size": 8}]}}
    assert listed_partitions(dump, 64 * 2**20) == [(2**20, 2**20), (2 * 2**20, 62 * 2**20)]
    assert listed_partitions({"partitiontable": {"label": "dos"}}, 2**20) == []


def test_grow_last_grows_an_empty_extended_container_that_ends_last() -> None:
    """An MBR extended container that holds no logical partition and ends last is the
    partition that grows: alone on the disk, max() of no other partition used to fail;
    after a primary, that primary grew into it, a table libparted cannot write (after the
    wipe). A container with free space after its last logical grows with that logical."""
    def msdos(*parts: Partition) -> Disk:
        return Disk(name="sda", size=64 * MIB, table="msdos", partitions=list(parts))

    def geometry(disk: Disk, policy: str = "grow-last") -> list[tuple[int, int, int]]:
        out = fit(disk, 128 * MIB, policy, "t")  # type: ignore[arg-type]
        return [(p.number, p.start, p.length) for p in out.partitions]

    alone = msdos(Partition(1, 2048, 129024, role="extended", kind="extended", mbr_type=0x05))
    assert geometry(alone) == [(1, 2048, 260096)]  # to sector 262143, the new last one
    after = msdos(Partition(1, 2048, 16384, mbr_type=0x83, volume="sda:p1"),
                  Partition(2, 18432, 112640, role="extended", kind="extended",
                            mbr_type=0x05))
    assert geometry(after) == [(1, 2048, 16384), (2, 18432, 243712)]
    spare = msdos(Partition(1, 2048, 8192, mbr_type=0x83),
                  Partition(2, 10240, 120832, role="extended", kind="extended",
                            mbr_type=0x05),
                  Partition(5, 12288, 8192, kind="logical", mbr_type=0x83))
    assert geometry(spare) == [(1, 2048, 8192), (2, 10240, 251904), (5, 12288, 249856)]
    with pytest.raises(UsageError) as err:
        geometry(alone, "proportional")
    assert str(err.value) == ("disk sda has an extended partition: proportional resize "
                              "supports primary partitions only (use --resize grow-last or "
                              "same)")


@pytest.mark.parametrize(("doc", "want"), [
    ({}, "malformed plan file: no 'version' field (save the plan again with `rescue plan "
         "--save`)"),
    ([1], "malformed plan file: not a plan saved by `rescue plan --save` (a JSON object)"),
])
def test_a_plan_file_that_is_no_plan_is_named_so(doc: object, want: str) -> None:
    """It said "malformed plan file: KeyError('version')"."""
    with pytest.raises(FormatError) as err:
        Plan.from_json(doc)
    assert str(err.value) == want
