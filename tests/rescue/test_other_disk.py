"""Restores onto a disk that differs from the source: another logical sector size (refused
before anything is written, or carried over onto a disk of the same one), an MBR at the
2 TiB limit of its 32-bit sector numbers, and the growing of a filesystem that is not
clean."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdpcore.errors import SafetyError
from cdpcore.layout import Disk, Partition
from rescue import growfs, partition
from rescue.engine import Engine, ExecuteOptions
from rescue.repo import Repository
from rescue.resize import RESIZE_POLICIES, fit
from tests.loopdev import attached_loop

from .conftest import MIB, PASS
from .pointmaker import make_point
from .test_post import mounted
from .test_restore import digest, make_source, partitions, point_of, region, sh

pytest.importorskip("parted")
TIB = 2**40
#: The last sector an MBR addresses (2^32 sectors: 2 TiB at 512 bytes).
MBR_LAST = 2**32 - 1


def test_a_512_byte_sector_point_is_refused_on_a_4kn_disk_before_writing(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "vda.img"
    make_source(source, "gpt")
    point_of(repo_host, source)
    backing = tmp_path / "kn.img"
    backing.write_bytes(os.urandom(128 * MIB))
    before = digest(backing)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with attached_loop(backing, "--sector-size", "4096") as dev:
        for resize in RESIZE_POLICIES:
            with pytest.raises(SafetyError) as err:
                engine.plan("latest", {"vda.img": dev}, resize=resize)
            assert str(err.value) == (f"target {dev} has 4096-byte sectors, source disk "
                                      "vda.img had 512: partition tables cannot be carried "
                                      "over")
    assert digest(backing) == before


def test_a_4kn_point_restores_and_grows_on_a_larger_4kn_disk_only(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """A point of a 4096-byte-sector disk: refused on a 512-byte-sector disk and on an
    image file (read as 512-byte sectors), restored onto a larger 4Kn disk with its GPT
    header at byte 4096, its boot code, its partitions in 4096-byte sectors, and its ext4
    grown, clean."""
    src_backing = tmp_path / "src.img"
    sh("truncate", "-s", str(64 * MIB), str(src_backing))
    with attached_loop(src_backing, "--sector-size", "4096") as src:
        sh("sgdisk", "-n1:256:+8M", "-t1:ef00", "-n2:0:0", "-t2:8300", "-c2:root", src)
        root = partitions(Path(src))[1]
        fs = tmp_path / "fs.img"
        sh("truncate", "-s", str(root["size"] * 4096), str(fs))
        sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "root", str(fs))
        sh("dd", f"if={fs}", f"of={src}", "bs=1M", f"seek={root['start'] * 4096}",
           "oflag=seek_bytes", "conv=notrunc", "status=none")
        with open(src, "r+b") as f:
            f.seek(100)
            f.write(b"GRUB boot code stand-in bytes")
        os.sync()
        make_point(repo_host["agent"], "web1", repo_host["codec"], [src])
        name = os.path.basename(src)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    image = tmp_path / "target.img"
    sh("truncate", "-s", str(128 * MIB), str(image))
    with pytest.raises(SafetyError) as err:
        engine.plan("latest", {name: str(image)})
    assert str(err.value).startswith(
        f"target {image} is an image file, which partition tools read as 512-byte sectors; "
        f"source disk {name} had 4096-byte sectors: restore onto a disk of that sector size")
    with attached_loop(image) as small, pytest.raises(SafetyError) as err:
        engine.plan("latest", {name: small})
    assert str(err.value) == (f"target {small} has 512-byte sectors, source disk {name} had "
                              "4096: partition tables cannot be carried over")
    assert not image.read_bytes().strip(b"\0")  # nothing written
    with attached_loop(image, "--sector-size", "4096") as dev:
        plan = engine.plan("latest", {name: dev}, resize="grow-last", verify="read-back")
        report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
        assert report.ok, report.errors
        sh("losetup", "-c", dev)
        table = json.loads(sh("sfdisk", "--json", dev))["partitiontable"]
        assert (table["sectorsize"], table["lastlba"]) == (4096, 128 * MIB // 4096 - 6)
        grown = table["partitions"][1]
        assert (grown["start"], grown["start"] + grown["size"] - 1) == \
            (root["start"], 128 * MIB // 4096 - 6)
        assert "No problems found" in sh("sgdisk", "-v", dev)
        assert region(image, 4096, 8) == b"EFI PART"
        assert region(image, 100, 29) == b"GRUB boot code stand-in bytes"
        with attached_loop(image, "--sector-size", "4096", "-o",
                           str(grown["start"] * 4096), "--sizelimit",
                           str(grown["size"] * 4096)) as part:
            sh("e2fsck", "-fn", part)
            assert f"Block count:              {grown['size']}\n" in sh("dumpe2fs", "-h", part)


def _mbr(*parts: Partition) -> Disk:
    return Disk(name="sda", size=2 * TIB, table="msdos", partitions=list(parts))


_AT_LIMIT = _mbr(Partition(1, 2048, MBR_LAST - 2048 + 1, mbr_type=0x83, volume="sda:p1"))
_LOGICAL_AT_LIMIT = _mbr(
    Partition(1, 2048, 8192, mbr_type=0x83, volume="sda:p1"),
    Partition(2, 10240, MBR_LAST - 10240 + 1, kind="extended", mbr_type=0x05),
    Partition(5, 12288, MBR_LAST - 12288 + 1, kind="logical", mbr_type=0x83, volume="sda:p5"))


@pytest.mark.parametrize(("layout", "policy"), [
    (_AT_LIMIT, "grow-last"), (_AT_LIMIT, "proportional"), (_LOGICAL_AT_LIMIT, "grow-last")],
    ids=["primary-grow-last", "primary-proportional", "logical-grow-last"])
def test_an_mbr_partition_ending_at_the_2_tib_limit_keeps_its_size(
        layout: Disk, policy: Any) -> None:
    """A 2 TiB disk whose last partition ends at its last sector, 2^32 - 1 (as fdisk and
    sfdisk make it), onto a larger disk: it cannot grow, and must not shrink (the restored
    filesystem would be a sector longer than its partition)."""
    out = fit(layout, 3 * TIB, policy, "t")
    assert [(p.number, p.start, p.length) for p in out.partitions] == \
        [(p.number, p.start, p.length) for p in layout.partitions]


def test_grow_last_on_mbr_reaches_the_2_tib_limit_and_libparted_writes_it(
        tmp_path: Path) -> None:
    """Grown onto a 3 TiB disk, the last logical partition and its container end at
    sector 2^32 - 1, the last an MBR addresses; libparted writes that table."""
    disk = Disk(name="sda", size=64 * MIB, table="msdos", partitions=[
        Partition(1, 2048, 8192, mbr_type=0x83),
        Partition(2, 10240, 120832, kind="extended", mbr_type=0x05),
        Partition(5, 12288, 118784, kind="logical", mbr_type=0x83)])
    out = fit(disk, 3 * TIB, "grow-last", "t")
    image = tmp_path / "3t.img"
    sh("truncate", "-s", str(3 * TIB), str(image))
    partition.write_table(str(image), out)
    assert {p["node"].removeprefix(str(image)): p["start"] + p["size"] - 1
            for p in partitions(image)} == {"1": 10239, "2": MBR_LAST, "5": MBR_LAST}


def _ext4_source(tmp_path: Path, damage: Callable[[Path], None]) -> tuple[Path, Path]:
    """A GPT disk image whose partition 2 holds an ext4 with files in a directory d,
    `damage`d; and that filesystem image as it went into the disk."""
    source = tmp_path / "vda.img"
    sh("truncate", "-s", str(64 * MIB), str(source))
    sh("sgdisk", "-n1:2048:+8M", "-t1:ef00", "-n2:0:0", "-t2:8300", str(source))
    part = partitions(source)[1]
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    for i in range(3):
        (tree / "d" / f"f{i}").write_bytes(os.urandom(100_000))
    fs = tmp_path / "fs.img"
    sh("truncate", "-s", str(part["size"] * 512), str(fs))
    sh("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(fs))
    damage(fs)
    sh("dd", f"if={fs}", f"of={source}", "bs=1M", f"seek={part['start'] * 512}",
       "oflag=seek_bytes", "conv=notrunc,sparse", "status=none")
    return source, fs


def _restore_grown(repo_host: dict[str, Any], tmp_path: Path, source: Path
                   ) -> tuple[Any, Path, dict[str, Any]]:
    point_of(repo_host, source)
    target = tmp_path / "big.img"
    sh("truncate", "-s", str(128 * MIB), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)}, resize="grow-last")
    assert [a.id for a in plan.actions if a.type == "grow_fs"] == ["grow_fs:vda.img:p2"]
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
    return report, target, partitions(target)[1]


def test_a_damaged_ext4_is_not_repaired_behind_the_restores_back(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """Growing needs a checked filesystem, but `e2fsck -y` on a damaged one clears
    entries and moves files to lost+found: a restore that said it was byte for byte would
    have changed the files. It is left as the point holds it, ungrown, and the report
    says why."""
    def clear_directory(fs: Path) -> None:
        sh("debugfs", "-w", "-R", "clri d", str(fs))  # d's inode: its files are orphans

    source, fs = _ext4_source(tmp_path, clear_directory)
    report, target, part = _restore_grown(repo_host, tmp_path, source)
    assert report.ok, report.errors
    assert region(target, part["start"] * 512, fs.stat().st_size) == fs.read_bytes()
    note = next(n for n in report.notes if "not grown" in n)
    assert note.startswith(f"ext4 filesystem at byte {part['start'] * 512} of {target} not "
                           "grown: e2fsck finds errors in it (")
    assert note.endswith("it is left at its old size, unrepaired: check it (e2fsck -f), "
                         "then grow it (resize2fs)")


def test_an_ext4_snapshot_taken_while_mounted_is_replayed_and_grown(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """A crash-consistent copy of a mounted ext4 (its journal needs recovery) is not a
    damaged one: its journal is replayed, it is grown, clean, its files intact."""
    def while_mounted(fs: Path) -> None:
        with mounted(str(fs), tmp_path / "mnt") as mnt:
            shutil.copytree(tmp_path / "tree", mnt / "more")
            os.sync()
            shutil.copy(fs, tmp_path / "copy.img")
        shutil.move(tmp_path / "copy.img", fs)
        assert "needs_recovery" in sh("dumpe2fs", "-h", str(fs))

    source, _ = _ext4_source(tmp_path, while_mounted)
    report, target, part = _restore_grown(repo_host, tmp_path, source)
    assert report.ok, report.errors
    assert not [n for n in report.notes if "not grown" in n]
    with attached_loop(target, "-o", str(part["start"] * 512),
                       "--sizelimit", str(part["size"] * 512)) as dev:
        sh("e2fsck", "-fn", dev)
        info = dict(line.split(":", 1) for line in sh("dumpe2fs", "-h", dev).splitlines()
                    if ":" in line)
        # resize2fs may leave a last group too small to be worth adding.
        fs_bytes = int(info["Block count"]) * int(info["Block size"])
        assert part["size"] * 512 - 4 * MIB <= fs_bytes <= part["size"] * 512
        with mounted(dev, tmp_path / "check") as mnt:
            for i in range(3):
                assert (mnt / "more" / "d" / f"f{i}").read_bytes() == \
                    (tmp_path / "tree" / "d" / f"f{i}").read_bytes()


def test_an_xfs_that_does_not_mount_is_left_ungrown_with_a_note(tmp_path: Path) -> None:
    """The last step of a restore: an XFS that does not mount (damaged in the point) is
    left as restored, and the report says so, rather than failing a restore whose every
    block is written and checked."""
    if not shutil.which("mkfs.xfs"):
        pytest.skip("xfsprogs is not installed")
    image = tmp_path / "xfs.img"
    sh("truncate", "-s", str(320 * MIB), str(image))
    sh("mkfs.xfs", "-q", "-f", str(image))
    with open(image, "r+b") as f:
        f.write(bytes(512))  # the superblock
    sh("truncate", "-s", str(400 * MIB), str(image))
    before = digest(image)
    notes = growfs.grow(str(image), 0, 400 * MIB, "xfs")
    assert len(notes) == 1
    assert notes[0].startswith(f"xfs filesystem at byte 0 of {image} not grown: it does not "
                               "mount (mount: ")
    assert notes[0].endswith("it is left at its old size: check it (xfs_repair), then grow "
                             "it (xfs_growfs)")
    assert digest(image) == before


@pytest.mark.parametrize("policy", ["grow-last", "same"])
def test_a_whole_disk_ext4_grows_onto_a_larger_disk_unless_the_policy_is_same(
        repo_host: dict[str, Any], tmp_path: Path, policy: str) -> None:
    """A disk formatted whole (no partition table) restored onto a larger one: with a
    policy that grows, its filesystem fills the new disk, as a last partition's would;
    with `same` it keeps its size. Its files come back either way."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(os.urandom(300_000))
    source = tmp_path / "vdb.img"
    sh("truncate", "-s", str(48 * MIB), str(source))
    sh("mkfs.ext4", "-q", "-F", "-d", str(tree), str(source))
    point_of(repo_host, source)
    target = tmp_path / "big.img"
    sh("truncate", "-s", str(96 * MIB), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vdb.img": str(target)}, resize=policy)
    grows = [a.id for a in plan.actions if a.type == "grow_fs"]
    assert grows == (["grow_fs:vdb.img:whole"] if policy == "grow-last" else [])
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
    assert report.ok, report.errors
    sh("e2fsck", "-fn", str(target))
    info = dict(line.split(":", 1) for line in sh("dumpe2fs", "-h", str(target)).splitlines()
                if ":" in line)
    fs_bytes = int(info["Block count"]) * int(info["Block size"])
    assert fs_bytes == (96 if policy == "grow-last" else 48) * MIB
    with mounted(str(target), tmp_path / "check") as mnt:
        assert (mnt / "f").read_bytes() == (tree / "f").read_bytes()
