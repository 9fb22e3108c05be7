"""Restores onto real block devices: loop devices on this machine (partitions of a loop
device have no nodes here, so the engine writes each partition at its byte offset on the
whole device, as it would on any disk). Also: a mounted disk and the boot medium (an ISO
with the rescue image's label) are refused before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdpcore.errors import SafetyError
from mkimage.qemu import image_dir
from rescue.discover import MEDIUM_LABEL, describe_target, discover_disks
from rescue.engine import Engine, ExecuteOptions
from rescue.repo import Repository
from rescue.target import Target
from rescue.tui.targets import problems
from tests.loopdev import attached_loop

from .conftest import MIB, PASS
from .test_restore import (
    check_equal,
    make_source,
    partitions,
    point_of,
    region,
    resized_gpt_source,
    scripted_source,
    sh,
)

pytest.importorskip("parted")
SWAP_UUID = "5ba1e5a0-0000-4000-8000-00000000c0de"


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    backing = tmp_path / "loopdisk.img"
    backing.write_bytes(os.urandom(64 * MIB))  # stale content that must not survive
    with attached_loop(backing) as dev:
        try:
            yield dev, backing
        finally:
            subprocess.run(["umount", dev], capture_output=True)


def test_a_gpt_numbering_partition_200_onto_a_loop_device(
        repo_host: dict[str, Any], tmp_path: Path, loop: tuple[str, Path]) -> None:
    """On a block device (libparted's commit, the kernel's reread) as on an image file: the
    new GPT holds 200 entries, partition 200 keeps its number, GUID, name and attribute
    bit, every entry is byte-equal to the source's."""
    dev, backing = loop
    source = tmp_path / "vda.img"
    src_table = resized_gpt_source(source)
    point_of(repo_host, source)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": dev}, verify="read-back")
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "state")))
    assert report.ok, report.errors
    sh("losetup", "-c", dev)
    os.sync()
    table = json.loads(sh("sfdisk", "--json", dev))["partitiontable"]
    assert (table["id"], table["table-length"], table["firstlba"], table["lastlba"]) == \
        (src_table["id"], "200", 52, 64 * MIB // 512 - 52)
    assert [(p["node"].removeprefix(dev + "p"), p["uuid"], p.get("name"), p.get("attrs"))
            for p in table["partitions"]] == \
        [(p["node"].removeprefix(str(source)), p["uuid"], p.get("name"), p.get("attrs"))
         for p in src_table["partitions"]]
    assert table["partitions"][-1]["attrs"] == "GUID:60"
    check_equal(source, backing)
    assert region(backing, 1024, 2046 * 512) == region(source, 1024, 2046 * 512)
    assert "No problems found" in sh("sgdisk", "-v", dev)


@pytest.mark.parametrize("table", ["gpt", "msdos"])
def test_restore_onto_loop_device(repo_host: dict[str, Any], tmp_path: Path,
                                  loop: tuple[str, Path], table: str) -> None:
    dev, backing = loop
    source = tmp_path / "vda.img"
    make_source(source, table)
    point_of(repo_host, source)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": dev}, verify="read-back")
    assert [dp.target.path for dp in plan.disks] == [dev]
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "state")))
    assert report.ok
    assert {a["device"] for a in report.actions} == {dev}
    sh("losetup", "-c", dev)
    os.sync()
    check_equal(source, backing)
    if table == "gpt":
        assert "No problems found" in sh("sgdisk", "-v", dev)
    else:
        assert json.loads(sh("sfdisk", "--json", str(source)))["partitiontable"]["id"] == \
            json.loads(sh("sfdisk", "--json", dev))["partitiontable"]["id"]


def test_restore_onto_a_loop_device_that_was_seen_smaller(repo_host: dict[str, Any],
                                                           tmp_path: Path) -> None:
    """libparted caches a device's length for the life of the process: a loop device
    probed while it was small, then grown (or reused for a larger file), must still get
    a table that fits its real size (this failed in CI when earlier tests had used the
    same /dev/loopN)."""
    parted = pytest.importorskip("parted")
    backing = tmp_path / "grown.img"
    backing.write_bytes(bytes(8 * MIB))
    with attached_loop(backing) as dev:
        parted.getDevice(dev).removeFromCache()  # whatever earlier tests left cached
        assert parted.getDevice(dev).getLength() * 512 == 8 * MIB  # now cached at 8 MiB
        with open(backing, "r+b") as f:
            f.truncate(64 * MIB)
        sh("losetup", "-c", dev)
        source = tmp_path / "vda.img"
        make_source(source, "gpt")
        point_of(repo_host, source)
        engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
        plan = engine.plan("latest", {"vda.img": dev})
        report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "state")))
        assert report.ok
        os.sync()
        check_equal(source, backing)


def test_mounted_loop_device_refused(repo_host: dict[str, Any], tmp_path: Path,
                                     loop: tuple[str, Path]) -> None:
    dev = loop[0]
    source = tmp_path / "vda.img"
    make_source(source, "gpt")
    point_of(repo_host, source)
    sh("mkfs.ext4", "-q", "-F", dev)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", dev, str(mnt))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with pytest.raises(SafetyError) as err:
        engine.plan("latest", {"vda.img": dev})
    assert str(err.value) == (f"refusing target {dev} for source disk vda.img: {dev} is "
                              f"mounted on {mnt}")
    sh("umount", str(mnt))
    # Untouched: still the ext4 filesystem, no partition table written over it.
    assert sh("blkid", "-p", "-o", "value", "-s", "TYPE", dev).strip() == "ext4"
    assert subprocess.run(["sfdisk", "--json", dev], capture_output=True).returncode != 0


def test_a_disk_claimed_without_mount_or_holder_is_refused(repo_host: dict[str, Any],
                                                           tmp_path: Path,
                                                           loop: tuple[str, Path]) -> None:
    """A disk opened exclusively by something that leaves no mount and no holder (the
    second device of a mounted multi-device btrfs; a program) is busy: never written."""
    dev = loop[0]
    source = tmp_path / "vda.img"
    make_source(source, "gpt")
    point_of(repo_host, source)
    before = hashlib.sha256(loop[1].read_bytes()).hexdigest()
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    held = os.open(dev, os.O_RDONLY | os.O_EXCL)
    try:
        reason = (f"{dev} in use (opened exclusively: a member of a mounted multi-device "
                  "filesystem, or held open by a program)")
        assert describe_target(dev).busy == [reason]
        with pytest.raises(SafetyError) as err:
            engine.plan("latest", {"vda.img": dev})
        assert str(err.value) == f"refusing target {dev} for source disk vda.img: {reason}"
    finally:
        os.close(held)
    assert describe_target(dev).busy == []
    assert hashlib.sha256(loop[1].read_bytes()).hexdigest() == before


def test_the_second_device_of_a_mounted_btrfs_raid_is_busy(tmp_path: Path) -> None:
    """Only the first device of a multi-device btrfs shows in /proc/mounts, and btrfs
    makes no holder: the other one is still in use."""
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("needs mkfs.btrfs (btrfs-progs)")
    images = [tmp_path / "bt1.img", tmp_path / "bt2.img"]
    for image in images:
        image.write_bytes(b"")
        os.truncate(image, 256 * MIB)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with attached_loop(images[0]) as first, attached_loop(images[1]) as second:
        sh("mkfs.btrfs", "-q", "-f", "-d", "raid1", "-m", "raid1", first, second)
        sh("mount", first, str(mnt))
        try:
            assert describe_target(first).busy == [f"{first} is mounted on {mnt}"]
            assert describe_target(second).busy == [
                f"{second} in use (opened exclusively: a member of a mounted multi-device "
                "filesystem, or held open by a program)"]
        finally:
            sh("umount", str(mnt))
        assert describe_target(second).busy == []


def _small_iso(path: Path) -> None:
    tree = path.with_suffix(".d")
    tree.mkdir()
    (tree / "README").write_text("not the rescue image, but labelled like it\n")
    sh("xorriso", "-as", "mkisofs", "-quiet", "-V", MEDIUM_LABEL, "-o", str(path), str(tree))


@pytest.mark.parametrize("medium", ["small-iso", "rescue-iso"])
def test_boot_medium_flagged_and_refused(repo_host: dict[str, Any], tmp_path: Path,
                                         medium: str) -> None:
    """The rescue system never mounts the stick it booted from: the ISO 9660 label alone
    must mark it (lsblk has no labels here without udev, so blkid's probe is what finds
    it), and the planner must refuse it with the reason named."""
    if medium == "rescue-iso":
        iso = image_dir() / "rescue.iso"
        if not iso.exists():
            pytest.skip(f"{iso} is missing: make iso")
    else:
        iso = tmp_path / "small.iso"
        _small_iso(iso)
    before = hashlib.sha256(iso.read_bytes()).hexdigest()
    source = tmp_path / "vda.img"
    make_source(source, "gpt")
    point_of(repo_host, source)
    with attached_loop(iso, "--read-only") as dev:
        reason = f"{dev} is the boot medium (ISO 9660 label CDP_RESCUE)"
        found = {d.path: d for d in discover_disks()}
        assert reason in found[dev].busy
        assert describe_target(dev).busy == [reason]
        engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
        with pytest.raises(SafetyError) as err:
            engine.plan("latest", {"vda.img": dev})
        assert str(err.value) == f"refusing target {dev} for source disk vda.img: {reason}"
        # The TUI's disk map offers it with the same reason, as not a target.
        layout = engine.repo.open_point(engine.repo.choose("latest").point_id).manifest.layout
        assert reason in problems(layout.disks[0], found[dev])
    assert hashlib.sha256(iso.read_bytes()).hexdigest() == before


def test_zeroing_a_device_off_page_boundaries_keeps_the_neighbours(
        loop: tuple[str, Path]) -> None:
    # A volume at sector 63 (an old MBR layout): its zero runs start and end inside pages
    # that neighbouring blocks share. Whole pages are zeroed with BLKZEROOUT, the edges
    # through the page cache; every byte outside the range keeps its content.
    dev, _ = loop
    with open(dev, "rb") as f:
        before = f.read(1 * MIB)
    offset, length = 63 * 512 + 16384, 3 * 16384
    with Target(dev, direct_buffer=MIB) as target:
        target.zero(offset, length)
        target.sync()
    with open(dev, "rb") as f:
        after = f.read(1 * MIB)
    assert after[offset:offset + length] == bytes(length)
    assert after[:offset] == before[:offset]
    assert after[offset + length:] == before[offset + length:]


def test_a_target_that_reads_zero_is_not_zeroed(loop: tuple[str, Path]) -> None:
    """A thin LV just made reads as zeros where nothing was written: zeroing it would
    provision every block (this device's stale bytes show that nothing was written)."""
    dev, _ = loop
    with open(dev, "rb") as f:
        before = f.read(1 * MIB)
    with Target(dev, reads_zero=True) as target:
        target.zero(0, MIB)
        target.sync()
    with open(dev, "rb") as f:
        assert f.read(1 * MIB) == before


def test_a_restored_swap_partition_hides_no_old_signature(repo_host: dict[str, Any],
                                                         tmp_path: Path,
                                                         loop: tuple[str, Path]) -> None:
    """A reused disk may hold an old signature inside the new swap partition, past the
    swap header: here an MD RAID 0.90 superblock, 64 KiB-aligned at its end. blkid then
    reported a RAID member and no swap UUID (no /dev/disk/by-uuid link: `swapon UUID=`
    fails at boot). mkswap on the partition would have wiped it; the restore must too."""
    dev, backing = loop
    source = tmp_path / "vda.img"
    make_source(source, "gpt")
    swap = next(p for p in partitions(source) if p["name"] == "swap")
    offset, size = swap["start"] * 512, swap["size"] * 512
    area = tmp_path / "swap.area"
    sh("truncate", "-s", str(size), str(area))
    sh("mkswap", "-U", SWAP_UUID, "-L", "oldswap", str(area))
    with open(source, "r+b") as f:
        f.seek(offset)
        f.write(area.read_bytes())
    point_of(repo_host, source)
    with open(backing, "r+b") as f:  # the disk's previous life: an MD member there
        f.seek(offset + (size & ~0xFFFF) - 0x10000)
        f.write(struct.pack("<4I", 0xA92B4EFC, 0, 90, 0).ljust(4096, b"\0"))
    assert probe_range(backing, offset, size)["TYPE"] == "linux_raid_member"
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": dev})
    assert engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "state"))).ok
    os.sync()
    found = probe_range(backing, offset, size)
    assert (found.get("TYPE"), found.get("UUID"), found.get("LABEL")) == \
        ("swap", SWAP_UUID, "oldswap")


def probe_range(image: Path, offset: int, size: int) -> dict[str, str]:
    """blkid's probe of a partition as udev makes it: a block device of its own (a loop
    device over its byte range)."""
    with attached_loop(image, "-r", "-o", str(offset), "--sizelimit", str(size)) as part:
        out = subprocess.run(["blkid", "-p", "-o", "export", part], capture_output=True,
                             text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


#: A new layout with free space: 1-9 MiB, 24-32 MiB, nothing from 32 MiB to the end.
SPACED_GPT = ("label: gpt\n"
              "1 : start=2048, size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
              "2 : start=49152, size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n")
#: The target's previous life: partitions (start MiB, size MiB, MBR type) where the new
#: layout has free space, an MBR's extended container and its logical partitions too.
OLD_TABLES = {"gpt": ((10, 6, ""), (16, 6, ""), (34, 11, ""), (46, 16, "")),
              "dos": ((10, 6, "83"), (16, 6, "83"), (34, 28, "5"), (36, 9, "83"),
                      (46, 16, "83"))}
#: Where the old ext4, btrfs and XFS start, and the old MD 0.90 superblock of the old
#: partition that ends at 45 MiB (64 KiB-aligned, 64 KiB before its device's end).
OLD_SIGNATURES = ((10 * MIB, "ext4"), (16 * MIB, "btrfs"), (46 * MIB, "xfs"),
                  (45 * MIB - 0x10000, "md"))


def _stub(tmp_path: Path, mkfs: list[str], size: int) -> bytes:
    """The first MiB of a fresh filesystem (a sparse scratch file): all blkid needs."""
    scratch = tmp_path / "stub.img"
    scratch.write_bytes(b"")
    os.truncate(scratch, size)
    sh(*mkfs, str(scratch))
    return region(scratch, 0, MIB)


def signatures(image: Path, offset: int, size: int) -> list[str]:
    """Every signature wipefs finds in a byte range of `image` (probed as a device of its
    own, as a partition made there later would be)."""
    with attached_loop(image, "-r", "-o", str(offset), "--sizelimit", str(size)) as part:
        out = json.loads(sh("wipefs", "--no-act", "--json", part) or '{"signatures": []}')
    return sorted(s["type"] for s in out["signatures"])


@pytest.mark.parametrize("old_table", ["gpt", "dos"])
def test_no_old_signature_survives_in_free_space(repo_host: dict[str, Any], tmp_path: Path,
                                                  loop: tuple[str, Path],
                                                  old_table: str) -> None:
    """A reused disk's old partitions lie where the new layout has free space: their
    ext4, btrfs, XFS and MD superblocks must not survive there (a partition made in that
    space later would show them, an old MD member or PV would be assembled at boot)."""
    dev, backing = loop
    source = tmp_path / "vda.img"
    scripted_source(source, SPACED_GPT)
    point_of(repo_host, source)
    old = OLD_TABLES[old_table]
    script = f"label: {old_table}\n" + "".join(
        f"start={start * 2048}, size={size * 2048}" + (f", type={kind}" if kind else "")
        + "\n" for start, size, kind in old)
    subprocess.run(["sfdisk", "--quiet", "--no-reread", dev], input=script, text=True,
                   check=True)
    stubs = {"ext4": _stub(tmp_path, ["mkfs.ext4", "-q", "-F"], 8 * MIB),
             "btrfs": _stub(tmp_path, ["mkfs.btrfs", "-q", "-f"], 128 * MIB),
             "xfs": _stub(tmp_path, ["mkfs.xfs", "-q", "-f"], 320 * MIB),
             "md": struct.pack("<4I", 0xA92B4EFC, 0, 90, 0).ljust(4096, b"\0")}
    with open(dev, "r+b") as f:
        for offset, kind in OLD_SIGNATURES:
            f.seek(offset)
            f.write(stubs[kind])
        os.fsync(f.fileno())
    found = sorted(sig for start, size, kind in old if kind != "5"
                   for sig in signatures(backing, start * MIB, size * MIB))
    assert found == ["btrfs", "ext4", "linux_raid_member", "xfs"]  # the old life is there
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": dev})
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "state")))
    assert report.ok
    # The new partitions hold nothing: every block is a zero block, zeroed over the old
    # bytes (never skipped: check_equal compares them with the source).
    assert [(v.written, v.zeroed) for v in report.volumes if v.volume.endswith(("p1", "p2"))] \
        == [(0, 8 * MIB), (0, 8 * MIB)]
    sh("losetup", "-c", dev)
    os.sync()
    check_equal(source, backing)
    for start, size, _ in old:
        assert signatures(backing, start * MIB, size * MIB) == [], (start, size)
    for start, end in ((9, 24), (32, 64)):  # the new layout's free space
        assert signatures(backing, start * MIB, (end - start) * MIB) == [], (start, end)
    # The disk itself: the new GPT (primary, backup, protective MBR) and nothing else.
    assert signatures(backing, 0, 64 * MIB) == ["PMBR", "gpt", "gpt"]


def test_a_larger_disk_keeps_no_old_signature_at_its_end(repo_host: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """A larger target that was a whole-disk MD 0.90 member and then a GPT disk: its old
    backup GPT and MD superblock lie at its end, far from the restored layout's end (the
    new backup GPT is written at the disk's end, over the zeroed old ones)."""
    source, backing = tmp_path / "vda.img", tmp_path / "big.img"
    make_source(source, "gpt")
    point_of(repo_host, source)
    backing.write_bytes(os.urandom(96 * MIB))
    with attached_loop(backing) as dev:
        with open(dev, "r+b") as f:
            f.seek(96 * MIB - 0x10000)
            f.write(struct.pack("<4I", 0xA92B4EFC, 0, 90, 0).ljust(4096, b"\0"))
        sh("sgdisk", "-n1:2048:+8M", "-n2:0:0", dev)  # backup GPT at the end too
        assert signatures(backing, 0, 96 * MIB) == ["PMBR", "gpt", "gpt", "linux_raid_member"]
        engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
        plan = engine.plan("latest", {"vda.img": dev})
        assert engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "state"))).ok
        os.sync()
        assert "No problems found" in sh("sgdisk", "-v", dev)
    check_equal(source, backing)
    assert signatures(backing, 0, 96 * MIB) == ["PMBR", "gpt", "gpt"]
    assert signatures(backing, 64 * MIB, 32 * MIB) == []  # the free space after the layout
