"""The boot-loader post-step up to GRUB itself, on real loop devices: the restored root is
found by its /etc/fstab, /boot is mounted as that fstab says, the chroot's bind mounts are
made, and a system without grub-install is refused with a clear message, with everything
unmounted again. (GRUB itself runs only in the restored system: see docs/RESCUE.md.)"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from cdpcore import runcmd
from cdpcore.errors import CommandFailed, UsageError
from rescue import bootloader
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


# --- review of the rescue's unattended path (2026-12-06) -------------------------------
# GRUB itself cannot run here, so `chroot ROOT ...` is replaced by a recorder; every mount
# and umount around it is real.

def _fake_chroot(monkeypatch: pytest.MonkeyPatch, on_chroot: Any = None) -> list[list[str]]:
    calls: list[list[str]] = []
    real_run = runcmd.run

    def run(argv: Any, **kw: Any) -> Any:
        if argv[0] == "chroot":
            calls.append([str(a) for a in argv])
            if on_chroot is not None:
                on_chroot(list(argv))
            return subprocess.CompletedProcess(argv, 0, b"", b"")
        return real_run(argv, **kw)

    monkeypatch.setattr(bootloader.runcmd, "run", run)
    return calls


def _root_with_grub(tmp_path: Path) -> Path:
    tree = tmp_path / "tree-grubroot"
    for rel, text in (("etc/fstab", "LABEL=cdptestgrub / ext4 defaults 0 1\n"),
                      ("usr/sbin/grub-install", "#!/bin/sh\n"),
                      ("usr/sbin/update-grub", "#!/bin/sh\n")):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    (tree / "boot").mkdir()
    img = tmp_path / "grubroot.img"
    sh("mkfs.ext4", "-q", "-F", "-L", "cdptestgrub", "-d", str(tree), str(img), "8M")
    return img


def test_a_failed_umount_never_deletes_the_restored_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Something left busy in the restored root after GRUB ran (here: an open file) makes
    its umount fail. The mount point was a TemporaryDirectory, whose cleanup then deleted
    everything on the still-mounted, freshly restored root filesystem."""
    held: list[Any] = []
    calls = _fake_chroot(monkeypatch, lambda argv: held.append(
        open(Path(argv[1]) / "etc/fstab")) if not held else None)  # noqa: SIM115
    with attached_loop(_root_with_grub(tmp_path)) as dev:
        try:
            with pytest.raises(CommandFailed, match="umount"):
                reinstall(dev, "bios", [dev], [dev])
            root = Path(calls[0][1])
            assert (root / "etc/fstab").read_text().startswith("LABEL=cdptestgrub")
            assert (root / "usr/sbin/grub-install").exists()
        finally:
            for f in held:
                f.close()
            left = [line.split()[1] for line in mounts().splitlines()
                    if "cdp-chroot" in line]
            for where in reversed(left):
                subprocess.run(["umount", where], check=False)
                subprocess.run(["rmdir", where], check=False)


@pytest.mark.parametrize("esp_at", ["/boot/efi", "/efi"])
def test_uefi_grub_goes_to_the_esp_the_fstab_mounts(
        esp_at: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A UEFI system whose fstab mounts its ESP at /efi (systemd's place, Arch's advice)
    had no ESP mounted in the chroot and grub-install pointed at /boot/efi, a plain
    directory of the root: GRUB refused it, the machine stayed unbootable."""
    seen: list[str] = []
    calls = _fake_chroot(monkeypatch, lambda argv: seen.extend(
        line.split()[1][len(argv[1]):] for line in mounts().splitlines()
        if line.split()[0].startswith("/dev/loop") and line.split()[1].startswith(argv[1])))
    tree = tmp_path / "tree-efiroot"
    for rel, text in (("etc/fstab", "LABEL=cdptestefi / ext4 defaults 0 1\n"
                                    f"LABEL=CDPESP {esp_at} vfat umask=0077 0 2\n"),
                      ("usr/sbin/grub-install", "#!/bin/sh\n")):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    (tree / esp_at[1:]).mkdir(parents=True)
    root_img, esp_img = tmp_path / "efiroot.img", tmp_path / "esp.img"
    sh("mkfs.ext4", "-q", "-F", "-L", "cdptestefi", "-d", str(tree), str(root_img), "8M")
    # This machine's kernel has no vfat: the "ESP" is ext4 (mount finds its type).
    sh("mkfs.ext4", "-q", "-F", "-L", "CDPESP", str(esp_img), "8M")
    monkeypatch.setattr(bootloader.os.path, "isdir", lambda p: False
                        if p == "/sys/firmware/efi/efivars" else os.path.exists(p))
    with attached_loop(root_img) as root, attached_loop(esp_img) as esp:
        notes = reinstall(root, "uefi", [root], [root, esp])
    assert calls[0][2:] == ["grub-install", "--target=x86_64-efi",
                            f"--efi-directory={esp_at}", "--recheck", "--removable",
                            "--no-nvram"]
    assert esp_at in seen and "at the removable path" in notes[0]
    assert "cdp-chroot" not in mounts()


def test_uefi_without_an_esp_in_fstab_is_refused_clearly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_chroot(monkeypatch)
    with attached_loop(_root_with_grub(tmp_path)) as dev, \
            pytest.raises(UsageError, match="no EFI system partition"):
        reinstall(dev, "uefi", [dev], [dev])
    assert calls == [] and "cdp-chroot" not in mounts()


def test_a_failed_umount_while_looking_for_the_root_is_an_error(
        loops: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """find_root's `except CommandFailed` (for "not mountable: not the root") also caught
    a failed umount of a candidate: that candidate was taken for "not the root", the next
    one tried, and its mount left behind without a word."""
    data, root, _ = loops
    real_run = runcmd.run
    failed: list[str] = []

    def run(argv: Any, **kw: Any) -> Any:
        if argv[0] == "umount" and not failed:  # busy, as if a process sat in it
            failed.append(str(argv[1]))
            raise CommandFailed([str(a) for a in argv], 32, f"umount: {argv[1]}: target is busy.")
        return real_run(argv, **kw)

    monkeypatch.setattr(bootloader.runcmd, "run", run)
    try:
        with pytest.raises(CommandFailed, match=r"umount .*target is busy"):
            bootloader.find_root([data, root])
        assert failed[0] in mounts()  # the data candidate, still mounted: said, not hidden
    finally:
        for where in failed:
            subprocess.run(["umount", where], check=False)
            subprocess.run(["rmdir", where], check=False)
    assert "cdp-root" not in mounts()


def test_paths_of_the_restored_system_resolve_its_links_inside_it(tmp_path: Path) -> None:
    """Absolute links mean the restored system's files: followed from the rescue system's
    /, a grub-install linked to /bin/sh was "found" in a system without one, and a /boot
    that is a link would be mounted over."""
    root = tmp_path / "root"
    (root / "usr/lib/grub").mkdir(parents=True)
    (root / "usr/sbin").mkdir()
    (root / "etc").mkdir()
    (root / "sbin").symlink_to("/usr/sbin")  # an absolute directory link on the way
    (root / "usr/sbin/grub-install").symlink_to("/usr/lib/grub/grub-install")
    (root / "usr/sbin/update-grub").symlink_to("/bin/sh")  # the rescue system has /bin/sh
    (root / "boot").symlink_to("/../../boot-real")  # ".." stops at the root
    (root / "etc/fstab").symlink_to("../etc/fstab.real")
    (root / "loop").symlink_to("/loop")
    (root / "lib").symlink_to("//usr/lib")  # pathlib keeps "//" as a part of its own
    assert bootloader.in_root(root, "/sbin/grub-install") == root / "usr/lib/grub/grub-install"
    assert bootloader.in_root(root, "boot") == root / "boot-real"
    assert bootloader.in_root(root, "/etc/fstab") == root / "etc/fstab.real"
    assert bootloader.in_root(root, "/usr/sbin/../lib") == root / "usr/lib"
    assert bootloader.in_root(root, "//lib/grub") == root / "usr/lib/grub"
    with pytest.raises(UsageError) as err:
        bootloader.in_root(root, "/loop/x")
    assert str(err.value) == "/loop/x in the restored system: too many levels of symbolic links"

    assert bootloader._first(root, "grub-install") is None  # its target is missing
    assert bootloader._first(root, "update-grub", "grub-mkconfig") is None
    (root / "usr/lib/grub/grub-install").write_text("#!/bin/sh\n")
    assert bootloader._first(root, "grub2-install", "grub-install") == "grub-install"
