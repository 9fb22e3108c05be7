"""Layout capture of odd but real disks: what the rescue rebuilds from the layout must be
the disk as it was, or the capture must say it cannot describe it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdpcore import runcmd
from cdpcore.layout import AMBIVALENT, Filesystem
from hotcopy.capture import capture, probe_fs
from hotcopy.errors import SourceError
from tests.loopdev import attached_loop

from .images import MiB, mkfs_ext4, zfs_label

SWAP_GUID = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"


def _disk(path: Path, script: str, mib: int = 40) -> Path:
    with open(path, "wb") as f:
        f.truncate(mib * MiB)
    runcmd.run(["sfdisk", "-q", str(path)], input=script.encode())
    return path


@pytest.mark.parametrize("label", ["my root", "é'x\"$\\z", "a\nTYPE=swap"])
def test_filesystem_labels_are_recorded_as_they_are(tmp_path: Path, label: str) -> None:
    """blkid's export format escapes what a shell would read differently (a space as
    `\\ `, a non-ASCII byte as `M-`, a newline as `^J`): those escapes used to be the
    recorded label, and a swap area the rescue remakes got it as its label."""
    img = tmp_path / "l.img"
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
    runcmd.run(["mkfs.ext4", "-q", "-F", str(img)])
    runcmd.run(["tune2fs", "-L", label, str(img)])
    fs = probe_fs(str(img), 0, 8 * MiB)
    assert fs is not None and (fs.type, fs.label) == ("ext4", label)
    runcmd.run(["mkswap", "-L", label[:15], str(img)])
    fs = probe_fs(str(img), 0, 8 * MiB)
    assert fs is not None and (fs.type, fs.label) == ("swap", label[:15])


def test_a_long_label_blkid_cannot_encode_whole_is_read_exactly(tmp_path: Path) -> None:
    """blkid's encoded form of a label has room for 264 characters, each space four
    (`\\x20`): a long btrfs label is read again as the one value it is."""
    img = tmp_path / "b.img"
    with open(img, "wb") as f:
        f.truncate(128 * MiB)
    label = " " * 100 + "x"
    runcmd.run(["mkfs.btrfs", "-q", "-f", "-L", label, str(img)])
    fs = probe_fs(str(img), 0, 128 * MiB)
    assert fs is not None and (fs.type, fs.label) == ("btrfs", label)


@pytest.mark.parametrize("table", ["gpt", "dos"])
def test_a_swap_typed_partition_holding_a_filesystem_is_copied(tmp_path: Path,
                                                               table: str) -> None:
    """A partition typed swap (GPT) or 0x82 (MBR, also Solaris' type) whose content is a
    filesystem: it used to be recorded as swap and not copied, and the rescue would have
    made a swap area over it. What blkid finds decides; the type only when it finds
    nothing (a swap encrypted with a random key)."""
    swap_type = SWAP_GUID if table == "gpt" else "82"
    img = _disk(tmp_path / "s.img", f"label: {table}\nstart=2048, size=8192, type={swap_type}\n"
                                    f"start=10240, size=8192, type={swap_type}\n"
                                    f"start=18432, size=8192, type={swap_type}\n")
    mkfs_ext4(img, 1 * MiB, 4 * MiB)
    area = tmp_path / "swap.img"
    with open(area, "wb") as f:
        f.truncate(4 * MiB)
    runcmd.run(["mkswap", str(area)])  # this mkswap has no --offset
    with open(img, "r+b") as f:
        f.seek(5 * MiB)
        f.write(area.read_bytes())
    layout, volumes = capture([str(img)], "web1")
    disk = layout.disk("s.img")
    assert [(p.number, p.role, p.filesystem.type if p.filesystem else None, p.volume)
            for p in disk.partitions] == [
        (1, "data", "ext4", "s.img:p1"), (2, "swap", "swap", None), (3, "swap", None, None)]
    assert ("s.img:p1", 1 * MiB, 4 * MiB) in [(v.name, v.offset, v.size) for v in volumes]


def test_a_swap_typed_partition_with_two_signatures_is_copied(tmp_path: Path) -> None:
    """blkid finds ext4 and a ZFS label (an "ambivalent result", exit 8), which used to
    fail the capture. Which one is current is unknown: the partition is recorded as
    ambivalent and copied, not taken for the swap its type says."""
    img = _disk(tmp_path / "a.img", f"label: gpt\nstart=2048, size=64M, type={SWAP_GUID}\n",
                mib=66)
    mkfs_ext4(img, 1 * MiB, 64 * MiB)
    zfs_label(img, 65 * MiB)
    layout, volumes = capture([str(img)], "web1")
    (part,) = layout.disk("a.img").partitions
    assert (part.role, part.filesystem, part.volume) == (
        "data", Filesystem(type=AMBIVALENT), "a.img:p1")
    assert [(v.name, v.offset, v.size, v.fstype) for v in volumes] == [
        ("a.img:boot", 0, 1 * MiB, None), ("a.img:p1", 1 * MiB, 64 * MiB, AMBIVALENT)]


def test_an_mbr_partition_of_type_0_is_not_left_out(tmp_path: Path) -> None:
    """An MBR entry of type 0 with a size: sfdisk lists it and the kernel makes it a
    partition (only the size counts there), libparted skips it as empty. It used to be
    left out of the layout without a word: the rescue would have rebuilt the table
    without it and its bytes were not copied."""
    img = _disk(tmp_path / "z.img", "label: dos\nstart=2048, size=8192, type=83\n"
                                    "start=10240, size=8192, type=0\n")
    mkfs_ext4(img, 5 * MiB, 4 * MiB)
    with pytest.raises(SourceError, match=r"z\.img: sfdisk reads partition 2 \(start 10240, "
                                          r"8192 sectors\), pyparted does not"):
        capture([str(img)], "web1")


def test_a_hybrid_mbr_is_captured_with_a_warning(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A GPT with a hybrid MBR (sgdisk -h: MBR entries beside the protective one): both
    tools read the GPT, and the rescue writes a protective MBR, so the hybrid entries
    are not restored. The agent says so."""
    img = tmp_path / "h.img"
    with open(img, "wb") as f:
        f.truncate(40 * MiB)
    runcmd.run(["sgdisk", "-n1:2048:+4M", "-t1:0700", "-n2:10240:+4M", "-t2:8300", str(img)])
    runcmd.run(["sgdisk", "-h", "1", str(img)])
    layout, _ = capture([str(img)], "web1")
    assert layout.disk("h.img").table == "gpt"
    assert f"{img}: the GPT has a hybrid MBR (MBR partitions beside the protective one)" \
        in caplog.text

    caplog.clear()
    img.unlink()  # a plain protective MBR: nothing to say
    with open(img, "wb") as f:
        f.truncate(40 * MiB)
    runcmd.run(["sgdisk", "-n1:2048:+4M", "-t1:0700", str(img)])
    capture([str(img)], "web1")
    assert "hybrid" not in caplog.text


@pytest.mark.parametrize("mkfs", [["mkfs.ext4", "-q", "-F"], ["mkfs.btrfs", "-q", "-f"]])
def test_a_whole_disk_filesystem_behind_an_empty_mbr_is_copied_whole(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, mkfs: list[str]) -> None:
    """A filesystem made on the whole disk, then a boot sector written in its sector 0
    (GRUB's boot.img: code and the boot signature, no partitions), which neither
    filesystem uses: sfdisk and pyparted read an MBR that lists nothing. The disk used to
    be recorded as an empty MBR with no volume at all: its filesystem was not copied."""
    img = tmp_path / "w.img"
    with open(img, "wb") as f:
        f.truncate(128 * MiB)
    runcmd.run([*mkfs, str(img)])
    with open(img, "r+b") as f:
        f.write(b"\xeb\x63\x90")
        f.seek(510)
        f.write(b"\x55\xaa")
    layout, volumes = capture([str(img)], "web1")
    disk = layout.disk("w.img")
    assert (disk.table, disk.partitions, disk.volume) == (None, [], "w.img:whole")
    assert disk.filesystem is not None and disk.filesystem.type == mkfs[0].split(".")[1]
    assert [(v.name, v.offset, v.size) for v in volumes] == [("w.img:whole", 0, 128 * MiB)]
    assert f"{img}: the msdos partition table lists no partition, and the whole disk " \
        f"holds {disk.filesystem.type}: the disk is copied whole, table included" in caplog.text


def test_an_empty_table_on_an_empty_disk_stays_a_table(tmp_path: Path) -> None:
    img = _disk(tmp_path / "e.img", "label: gpt\n")
    layout, volumes = capture([str(img)], "web1")
    disk = layout.disk("e.img")
    assert (disk.table, disk.partitions, disk.volume, volumes) == ("gpt", [], None, [])


def test_an_ebr_chain_with_an_empty_link_is_captured(tmp_path: Path) -> None:
    """An EBR whose partition entry is empty but which links to the next EBR (a logical
    partition deleted by a tool that kept the chain): sfdisk says "omitting empty
    partition (6)" on its standard output, before the JSON, and the capture used to fail
    on every point with "output is not JSON". The kernel, sfdisk and pyparted all number
    the logical partitions that remain 5 and 6."""
    img = _disk(tmp_path / "x.img", "label: dos\nstart=2048, size=8192, type=83\n"
                                    "start=10240, size=40000, type=5\nstart=12288, size=2048\n"
                                    "start=16384, size=2048\nstart=20480, size=2048\n")
    with open(img, "r+b") as f:
        f.seek(14336 * 512)  # the EBR of the second logical partition
        ebr = f.read(512)
        assert ebr[510:] == b"\x55\xaa" and int.from_bytes(ebr[454:458], "little") == 2048
        f.seek(14336 * 512 + 446)
        f.write(bytes(16))
    layout, volumes = capture([str(img)], "web1")
    assert [(p.number, p.start, p.kind) for p in layout.disk("x.img").partitions] == [
        (1, 2048, "primary"), (2, 10240, "extended"), (5, 12288, "logical"),
        (6, 20480, "logical")]
    assert [v.name for v in volumes] == ["x.img:boot", "x.img:p1", "x.img:p5", "x.img:p6"]


def test_the_content_decides_a_swap_typed_partitions_role() -> None:
    """A PV in a partition typed swap was recorded as swap: not copied, not in a VG's
    PVs, and remade as a swap area by the rescue."""
    from hotcopy.capture import MBR_SWAP, _role

    pv, swap = Filesystem("LVM2_member"), Filesystem("swap")
    assert _role(pv, SWAP_GUID, None, ["swap"], "primary") == "lvm_pv"
    assert _role(pv, None, MBR_SWAP, [], "logical") == "lvm_pv"
    assert _role(Filesystem("crypto_LUKS"), SWAP_GUID, None, [], "primary") == "data"
    assert _role(swap, None, 0x83, [], "primary") == "swap"
    assert _role(None, SWAP_GUID, None, [], "primary") == "swap"
    assert _role(Filesystem("swsuspend"), None, MBR_SWAP, [], "primary") == "swap"


def _4kn_image(img: Path, table: bytes) -> Path:
    """A 64 MiB image of a disk of 4096-byte sectors: the sfdisk script `table` (one
    partition at 1 MiB, 16 MiB long) and ext4 in that partition."""
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    with attached_loop(img, "--sector-size", "4096") as dev:
        runcmd.run(["sfdisk", "-q", dev], input=table)
    mkfs_ext4(img, 1 * MiB, 16 * MiB)
    return img


def test_an_image_of_a_4kn_mbr_disk_is_refused(tmp_path: Path) -> None:
    """An image file of a disk of 4096-byte sectors with an MBR: sfdisk and pyparted read
    a file as 512-byte sectors, so the partitions came out at an eighth of their offsets
    and sizes, and their volumes copied the wrong bytes (2 of the filesystem's 16 MiB,
    from the wrong place), without a word. Attached as a 4Kn loop device it is right."""
    img = _4kn_image(tmp_path / "k.img", b"label: dos\nstart=256, size=4096, type=83\n")
    with pytest.raises(SourceError, match=r"k\.img: partition 1 holds nothing at byte 131072 "
                                          r"but ext4 at byte 1048576: an image of a disk of "
                                          r"4096-byte sectors"):
        capture([str(img)], "web1")
    with attached_loop(img, "--sector-size", "4096") as dev:
        layout, volumes = capture([dev], "web1")
        part = layout.disks[0].partition(1)
        assert part.filesystem is not None and part.filesystem.type == "ext4"
        assert (volumes[1].offset, volumes[1].size) == (1 * MiB, 16 * MiB)


@pytest.mark.parametrize("headers", ["both", "backup"])
def test_an_image_of_a_4kn_gpt_disk_is_refused(tmp_path: Path, headers: str) -> None:
    """An image file of a disk of 4096-byte sectors with a GPT: read as 512-byte sectors,
    sfdisk found no GPT header (it is in the 4096-byte sector 1, the backup in the last)
    but the protective MBR, which pyparted refused, so the disk was copied whole, no
    partition a volume of its own, with a warning that told of a dos table pyparted
    could not read. The capture says what the file is and what to do, as for a 4Kn MBR,
    also when only the backup header is left. Attached as a 4Kn loop device it is right
    (with the primary header lost, what any disk with a damaged GPT gets)."""
    img = _4kn_image(tmp_path / "k.img", b"label: gpt\nstart=256, size=4096\n")
    if headers == "backup":
        with open(img, "r+b") as f:
            f.seek(4096)
            f.write(bytes(4096))
    header = 4096 if headers == "both" else 64 * MiB - 4096
    with pytest.raises(SourceError) as refused:
        capture([str(img)], "web1")
    assert str(refused.value) == (
        f"{img}: a GPT of 4096-byte sectors (a header at byte {header}), which this file "
        "read as 512-byte sectors does not show: an image of a disk of 4096-byte sectors; "
        "attach it as a loop device (losetup --sector-size 4096) and protect that")
    with attached_loop(img, "--sector-size", "4096") as dev:
        layout, volumes = capture([dev], "web1")
        disk = layout.disks[0]
        if headers == "backup":  # a damaged GPT, as on any disk: copied whole, table included
            assert disk.table is None
            assert [(v.offset, v.size) for v in volumes] == [(0, 64 * MiB)]
            return
        assert (disk.table, disk.logical_sector_size) == ("gpt", 4096)
        part = disk.partition(1)
        assert part.filesystem is not None and part.filesystem.type == "ext4"
        assert [(v.offset, v.size) for v in volumes[1:]] == [(1 * MiB, 16 * MiB)]


def test_an_empty_partition_before_one_at_eight_times_its_start_is_not_refused(
        tmp_path: Path) -> None:
    """The 4Kn guard looks where 4096-byte sectors would put a partition: not where a
    partition of the table starts, whose filesystem it would find."""
    img = _disk(tmp_path / "n.img", "label: dos\nstart=2048, size=8192, type=83\n"
                                    "start=16384, size=8192, type=83\n")
    mkfs_ext4(img, 8 * MiB, 4 * MiB)
    layout, _ = capture([str(img)], "web1")
    assert [(p.number, p.filesystem.type if p.filesystem else None)
            for p in layout.disk("n.img").partitions] == [(1, None), (2, "ext4")]
