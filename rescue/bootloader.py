"""Reinstalling the boot loader of a restored system, a post-step for new hardware
(`rescue restore --reinstall-bootloader`): another disk name, or a UEFI machine whose NVRAM
lacks the old boot entry. GRUB is installed again from inside the restored system (its own
GRUB and kernel versions, in a chroot), its configuration and initramfs regenerated.

The root filesystem is found by mounting each candidate (restored partitions and LVs with
a Linux filesystem) and looking for /etc/fstab; /boot, /boot/efi and /efi are mounted as
its fstab says, found among the restored devices only. UEFI: `grub-install
--target=x86_64-efi --efi-directory=ESP` (the FAT filesystem the fstab mounts), which
writes the NVRAM entry through efibootmgr; when the rescue system itself was not booted
by UEFI there are no EFI variables to write, so GRUB also goes to the removable path
(EFI/BOOT/BOOTX64.EFI) that firmware finds without an entry.
BIOS: `grub-install --target=i386-pc DISK`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cdpcore import runcmd
from cdpcore.errors import CommandFailed, UsageError

#: Filesystems a Linux root can be on (the candidates the plan lists).
ROOT_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs")
_TAGS = ("UUID", "LABEL", "PARTUUID", "PARTLABEL")


@dataclass(frozen=True)
class FstabEntry:
    spec: str  # UUID=..., LABEL=..., /dev/...
    mountpoint: str
    fstype: str


def _unescape(field: str) -> str:
    """fstab's octal escapes (\\040 for a space) back to the bytes they stand for (a
    non-ASCII label is escaped byte by byte)."""
    raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field.encode())
    return raw.decode(errors="surrogateescape")


def parse_fstab(text: str) -> list[FstabEntry]:
    """The entries of an fstab (comments, blank and short lines skipped; \\040 unescaped)."""
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3:
            out.append(FstabEntry(_unescape(fields[0]), _unescape(fields[1]), fields[2]))
    return out


def boot_mounts(entries: list[FstabEntry]) -> list[FstabEntry]:
    """/boot, /boot/efi and /efi (whichever exist), in mount order."""
    by_mount = {e.mountpoint.rstrip("/") or "/": e for e in entries}
    return [by_mount[m] for m in ("/boot", "/boot/efi", "/efi") if m in by_mount]


def esp_directory(entries: list[FstabEntry]) -> str | None:
    """Where the restored system mounts its EFI system partition (a FAT filesystem at
    /boot/efi, /efi or /boot), for grub-install's --efi-directory; None if nowhere."""
    for entry in boot_mounts(entries):
        if entry.fstype in ("vfat", "msdos", "fat"):
            return entry.mountpoint.rstrip("/")
    return None


def resolve(spec: str, devices: list[str]) -> str:
    """The restored device an fstab spec (UUID=, LABEL=, PARTUUID=, PARTLABEL=, /dev/...)
    names, looked for only among `devices`, the plan's partitions and LVs: the restore
    copies UUIDs and labels, so an old disk still attached holds the same ones, and a
    search of the whole system (findfs) could mount and write that disk."""
    tag, _, value = spec.partition("=")
    if tag in _TAGS:
        # blkid compares the raw value (its export format escapes spaces and non-ASCII),
        # read from the devices, not its cache: they were just restored.
        value = value.strip('"')
        done = runcmd.run(["blkid", "-c", "/dev/null", "-t", f"{tag}={value}", "-o", "device",
                           *devices], check=False)
        matches = set(done.stdout.decode(errors="replace").split("\n"))
        found = next((d for d in devices if d in matches), None)
    elif spec.startswith("/dev/"):
        found = next((d for d in devices if os.path.realpath(d) == os.path.realpath(spec)),
                     None)
    else:
        raise UsageError(f"cannot resolve fstab device {spec!r} of the restored system")
    if found is None:
        raise UsageError(f"the restored system's fstab names {spec}, which is none of the "
                         f"restored devices ({', '.join(devices)}): reinstall its boot "
                         "loader by hand")
    return found


@contextlib.contextmanager
def _mountpoint(prefix: str) -> Iterator[str]:
    """An empty directory to mount on, removed afterwards with rmdir only. Never a
    tempfile.TemporaryDirectory: its cleanup deletes recursively, and after an umount that
    failed ("target is busy": a process GRUB's tools left in the chroot, an open file)
    that deleted everything on the restored filesystem still mounted there. A directory
    still mounted on is left (rmdir refuses it), as is the mount: the umount's error says
    so."""
    where = tempfile.mkdtemp(prefix=prefix)
    try:
        yield where
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(where)


@contextlib.contextmanager
def _mounted(device: str, where: str, *options: str) -> Iterator[str]:
    runcmd.run(["mount", *options, device, where])
    try:
        yield where
    finally:
        runcmd.run(["umount", where])


def find_root(candidates: list[str]) -> str:
    """The candidate device holding a root filesystem (it has /etc/fstab)."""
    for device in candidates:
        with _mountpoint("cdp-root-") as mnt, contextlib.ExitStack() as mounted:
            # Only the mount's failure means "not the root": a failed umount (once caught
            # here too) left the mount behind, silently, and could even turn the root
            # found into "no root"; it is an error of its own, raised as the stack exits.
            try:
                mounted.enter_context(_mounted(device, mnt, "-o", "ro"))
            except CommandFailed:
                continue  # not mountable here (another filesystem): not the root
            if in_root(Path(mnt), "etc/fstab").is_file():
                return device
    raise UsageError("no restored filesystem holds /etc/fstab: cannot find the root "
                     "filesystem to reinstall the boot loader from (checked "
                     + ", ".join(candidates) + ")")


#: Symbolic links followed in one path before giving up, as the kernel's limit.
_MAX_LINKS = 40


def in_root(root: Path, path: str) -> Path:
    """`path` of the system mounted at `root`, its symbolic links resolved as that system
    sees them: an absolute link target starts again at `root` and ".." stops there. A
    plain `root / path` follows an absolute link (/sbin -> /usr/sbin, a grub-install
    linked by absolute path) into the rescue system's own files, and a mount point that is
    such a link would mount over a directory of the rescue system."""
    resolved = root
    parts = _relative_parts(path)
    links = 0
    while parts:
        part = parts.pop(0)  # pathlib has dropped "" and "."
        if part == "..":
            resolved = resolved.parent if resolved != root else root
            continue
        step = resolved / part
        if not step.is_symlink():
            resolved = step
            continue
        links += 1
        if links > _MAX_LINKS:
            raise UsageError(f"{path} in the restored system: too many levels of "
                             "symbolic links")
        target = os.readlink(step)
        if target.startswith("/"):
            resolved = root
        parts = _relative_parts(target) + parts
    return resolved


def _relative_parts(path: str) -> list[str]:
    """The parts of `path` without its anchor ("/", and "//", which POSIX lets a system
    give a meaning of its own and pathlib keeps as one part)."""
    return [p for p in Path(path).parts if not p.startswith("/")]


def _first(root: Path, *names: str) -> str | None:
    for name in names:
        for base in ("usr/sbin", "sbin", "usr/bin", "bin"):
            if in_root(root, f"{base}/{name}").exists():
                return name
    return None


def reinstall(disk: str, boot_mode: str, candidates: list[str], devices: list[str],
              ) -> list[str]:
    """Reinstall GRUB for `boot_mode` ("bios" or "uefi") onto `disk` from the restored
    root among `candidates`, with /boot and /boot/efi among `devices` (every restored
    partition and LV), regenerate its config and initramfs. Returns notes."""
    notes: list[str] = []
    root_dev = find_root(candidates)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(_mountpoint("cdp-chroot-")))
        stack.enter_context(_mounted(root_dev, str(root)))
        grub = _first(root, "grub-install", "grub2-install")
        if grub is None:
            raise UsageError(f"the restored system on {root_dev} has no grub-install: "
                             "reinstall its boot loader by hand")
        fstab = parse_fstab(in_root(root, "etc/fstab").read_text())
        # The ESP where the fstab puts it (/efi too, not only /boot/efi); without one,
        # grub-install would be pointed at a plain directory of the root and fail in
        # GRUB's words.
        esp = esp_directory(fstab)
        if boot_mode == "uefi" and esp is None:
            raise UsageError(f"the restored system on {root_dev} mounts no EFI system "
                             "partition (no FAT filesystem at /boot/efi, /efi or /boot in "
                             "its /etc/fstab): reinstall its boot loader by hand")
        for entry in boot_mounts(fstab):
            stack.enter_context(_mounted(resolve(entry.spec, devices),
                                         str(in_root(root, entry.mountpoint))))
        for fs in ("/dev", "/proc", "/sys", "/run"):
            # A root restored from a live system has these (empty) directories; an
            # older capture without them gets them, as a fresh install would.
            inside = in_root(root, fs)
            inside.mkdir(exist_ok=True)
            stack.enter_context(_mounted(fs, str(inside), "--bind"))
        efivars = "/sys/firmware/efi/efivars"
        if os.path.isdir(efivars):
            stack.enter_context(_mounted(efivars, str(in_root(root, efivars)), "--bind"))
        chroot = ["chroot", str(root)]
        if boot_mode == "uefi":
            argv = [*chroot, grub, "--target=x86_64-efi", f"--efi-directory={esp}",
                    "--recheck"]
            if not os.path.isdir(efivars):
                argv += ["--removable", "--no-nvram"]
                notes.append("the rescue system was not booted by UEFI: GRUB was installed "
                             "at the removable path EFI/BOOT/BOOTX64.EFI, without an NVRAM "
                             "entry")
            runcmd.run(argv)
        elif boot_mode == "bios":
            runcmd.run([*chroot, grub, "--target=i386-pc", "--recheck", disk])
        else:
            raise UsageError(f"boot mode of the protected machine is {boot_mode!r}: cannot "
                             "tell whether to install GRUB for BIOS or UEFI")
        mkconfig = _first(root, "update-grub", "grub-mkconfig", "grub2-mkconfig")
        if mkconfig == "update-grub":
            runcmd.run([*chroot, "update-grub"])
        elif mkconfig is not None:
            cfg = "/boot/grub2/grub.cfg" if mkconfig.startswith("grub2") else "/boot/grub/grub.cfg"
            runcmd.run([*chroot, mkconfig, "-o", cfg])
        initramfs = _first(root, "update-initramfs", "dracut")
        if initramfs == "update-initramfs":
            runcmd.run([*chroot, "update-initramfs", "-u", "-k", "all"])
        elif initramfs == "dracut":
            runcmd.run([*chroot, "dracut", "--force", "--regenerate-all"])
        else:
            notes.append(f"the restored system on {root_dev} has neither update-initramfs "
                         "nor dracut: its initramfs was not regenerated")
    return notes
