"""The boot-loader post-step up to GRUB itself, on real loop devices: the restored root is
found by its /etc/fstab, /boot is mounted as that fstab says, the chroot's bind mounts are
made, and a system without grub-install is refused with a clear message, with everything
unmounted again. (GRUB itself runs only in the restored system: see docs/RESCUE.md.)"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from cdpcore.errors import UsageError
from rescue.bootloader import parse_fstab, reinstall, resolve
from tests.loopdev import attached_loop

MIB = 1024 * 1024


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[list[str]]:
    """Three ext4 loop devices: a data fs, a root (fstab naming /boot by label), /boot."""
    with ExitStack() as attached:
        yield [attached.enter_context(attached_loop(img)) for img in _images(tmp_path)]


def _images(tmp_path: Path) -> Iterator[Path]:
    for name, files in (("data", {}),
                        ("root", {"etc/fstab": "LABEL=cdptestroot / ext4 defaults 0 1\n"
                                               "LABEL=cdptestboot /boot ext4 defaults 0 2\n"}),
                        ("boot", {"grub/grub.cfg": "# old\n"})):
        tree = tmp_path / f"tree-{name}"
        (tree / "boot").mkdir(parents=True)
        for rel, text in files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_text(text)
        img = tmp_path / f"{name}.img"
        sh("mkfs.ext4", "-q", "-F", "-L", f"cdptest{name}", "-d", str(tree), str(img), "8M")
        yield img


def mounts() -> str:
    return Path("/proc/mounts").read_text()


def test_root_found_boot_mounted_and_missing_grub_refused(loops: list[str]) -> None:
    data, root, _ = loops
    with pytest.raises(UsageError) as err:
        reinstall("/dev/null", "bios", [data, root], loops)
    assert str(err.value) == (f"the restored system on {root} has no grub-install: "
                              "reinstall its boot loader by hand")
    assert "cdp-chroot" not in mounts() and "cdp-root" not in mounts()


def test_no_root_filesystem(loops: list[str]) -> None:
    with pytest.raises(UsageError) as err:
        reinstall("/dev/null", "uefi", [loops[0], loops[2]], loops)
    assert str(err.value) == ("no restored filesystem holds /etc/fstab: cannot find the root "
                              f"filesystem to reinstall the boot loader from (checked "
                              f"{loops[0]}, {loops[2]})")
    assert "cdp-root" not in mounts()


def test_boot_filesystems_are_found_only_among_the_restored_devices(
        loops: list[str], tmp_path: Path) -> None:
    """The old system disk, still attached, holds the same UUID and label as the restored
    /boot (a byte-exact restore copies them): /boot is looked for among the restored
    devices only, never mounted (and written) from the old disk."""
    data, root, boot = loops
    uuid = sh("blkid", "-c", "/dev/null", "-s", "UUID", "-o", "value", boot).strip()
    old = tmp_path / "old-boot.img"
    sh("mkfs.ext4", "-q", "-F", "-L", "cdptestboot", "-U", uuid, str(old), "8M")
    with attached_loop(old) as old_boot:
        for spec in (f"UUID={uuid}", "LABEL=cdptestboot", 'LABEL="cdptestboot"', boot):
            assert resolve(spec, loops) == boot
        with pytest.raises(UsageError) as err:
            resolve(old_boot, loops)
        assert str(err.value) == (
            f"the restored system's fstab names {old_boot}, which is none of the restored "
            f"devices ({data}, {root}, {boot}): reinstall its boot loader by hand")
        with pytest.raises(UsageError) as err:
            resolve("LABEL=cdptestboot", [data, root])
        assert str(err.value).startswith("the restored system's fstab names "
                                         "LABEL=cdptestboot, which is none of the restored")


def test_fstab_escapes_and_labels_blkid_would_print_escaped(tmp_path: Path) -> None:
    """A label with a space, a "$" and a non-ASCII letter, named in fstab with its octal
    escapes: found by its raw value (blkid's export output escapes all three)."""
    image = tmp_path / "labelled.img"
    sh("mkfs.ext4", "-q", "-F", "-L", "my bö$x", str(image), "8M")
    (entry,) = parse_fstab("LABEL=my\\040b\\303\\266$x /boot\\040x ext4 defaults 0 2\n")
    assert (entry.spec, entry.mountpoint) == ("LABEL=my bö$x", "/boot x")
    with attached_loop(image) as dev:
        assert resolve(entry.spec, [dev]) == dev
