"""The drill's protected server: a VM disk with GPT (BIOS-boot partition, EFI system
partition, /boot, LVM PV with VG `drillvg` holding the `root` and `data` LVs, all ext4 but the
vfat ESP), GRUB for BIOS and UEFI, and a small Debian system on the root LV.

This machine has no device-mapper, so the disk is built INSIDE a QEMU VM booted from the
rescue image (mkimage.qemu): the rescue image's own userland (python3, lvm2, the agent) is
copied onto the root LV and its kernel and initrd onto /boot, with a small initramfs layer
appended (guest/init: activate LVM, mount the root LV, switch_root) and guest/drill-init as
the system's init, which starts `cdp-agent run` when /etc/cdp-agent/agent.toml exists and
prints `CDP-DRILL-BOOTED <hostname>` on the serial console.

The built disk is cached under the image cache (CDP_IMAGE_CACHE, default
/var/cache/cdp-mkimage), keyed by the rescue kernel and initrd and the files that build it.
Run `python -m tests.drill.protected` to build it (or reuse the cached one) and print its path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mkimage import cachedir, cpio
from mkimage.qemu import VM, Disk, KernelBoot, VMConfig, image_dir, qemu_argv

HERE = Path(__file__).resolve().parent
GUEST = HERE / "guest"
HOSTNAME = "drill-protected"
VG = "drillvg"
DISK_BYTES = 2 << 30
MARKER = re.compile(rb"CDP-DRILL-BOOTED (\S+)\r?\n")
#: Files whose content decides the built disk (with the rescue kernel and initrd).
_KEY_FILES = (GUEST / "init", GUEST / "drill-init", Path(__file__).resolve())

# Runs in the rescue VM with the blank disk as $DISK and the staging directory on /mnt/host.
_BUILD_SCRIPT = r"""
set -eu
DISK=/dev/vda
sgdisk --zap-all $DISK >/dev/null
sgdisk -n1:1MiB:+1MiB -t1:EF02 -c1:bios-boot \
       -n2:0:+64MiB -t2:EF00 -c2:esp \
       -n3:0:+256MiB -t3:8300 -c3:boot \
       -n4:0:0 -t4:8E00 -c4:lvm $DISK >/dev/null
partprobe $DISK; udevadm settle
mkfs.vfat -F 32 -n ESP ${DISK}2 >/dev/null
mkfs.ext4 -q -L boot ${DISK}3
lvm pvcreate -q ${DISK}4
lvm vgcreate -q @VG@ ${DISK}4
lvm lvcreate -q -y -n root -L 640M @VG@
lvm lvcreate -q -y -n data -L 128M @VG@
# dm-era metadata for the data LV (drill-init puts the era device over it at boot).
lvm lvcreate -q -y -Zy -n data-era -L 8M @VG@
dd if=/dev/zero of=/dev/@VG@/data-era bs=1M count=8 2>/dev/null
udevadm settle
mkfs.ext4 -q -L root /dev/@VG@/root
mkfs.ext4 -q -L data /dev/@VG@/data
T=/mnt/target
mkdir -p $T
mount /dev/@VG@/root $T
# The rescue userland, minus pseudo file systems, the 9p share, and what the installed
# system does not need (its initramfs stage loads the modules; GRUB is installed below).
tar -C / --one-file-system -cf - --exclude=./proc --exclude=./sys --exclude=./dev \
    --exclude=./run --exclude=./tmp --exclude=./mnt --exclude=./init \
    --exclude=./usr/lib/modules --exclude=./usr/lib/grub . | tar -C $T -xf -
mkdir -p $T/proc $T/sys $T/dev $T/run $T/tmp $T/mnt $T/boot $T/data $T/var/log
cp /mnt/host/drill-init $T/sbin/drill-init
chmod 755 $T/sbin/drill-init
echo @HOST@ > $T/etc/hostname
ROOT_UUID=$(blkid -s UUID -o value /dev/@VG@/root)
BOOT_UUID=$(blkid -s UUID -o value ${DISK}3)
ESP_UUID=$(blkid -s UUID -o value ${DISK}2)
# The ESP is mounted only when a boot loader update needs it: a mounted FAT carries its
# dirty bit into every snapshot, and a restored one would not fsck clean.
cat > $T/etc/fstab <<FSTAB
UUID=$ROOT_UUID / ext4 defaults 0 1
UUID=$BOOT_UUID /boot ext4 defaults 0 2
UUID=$ESP_UUID /boot/efi vfat noauto 0 2
/dev/mapper/cdpera-data /data ext4 defaults 0 2
FSTAB
mount ${DISK}3 $T/boot
mkdir -p $T/boot/efi
mount ${DISK}2 $T/boot/efi
cp /mnt/host/vmlinuz /mnt/host/initrd.img $T/boot/
grub-install --target=i386-pc --boot-directory=$T/boot $DISK
grub-install --target=x86_64-efi --efi-directory=$T/boot/efi --boot-directory=$T/boot \
    --removable --no-nvram
cat > $T/boot/grub/grub.cfg <<GRUB
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
set default=0
menuentry "drill protected server" {
    search --no-floppy --fs-uuid --set=root $BOOT_UUID
    linux /vmlinuz root=UUID=$ROOT_UUID console=ttyS0,115200n8 quiet loglevel=3 panic=-1
    initrd /initrd.img
}
GRUB
sync
umount $T/boot/efi $T/boot $T
lvm vgchange -q -an @VG@
sync
"""


@dataclass(frozen=True)
class ProtectedDisk:
    """A built (cached) protected disk: never boot it directly, boot a copy (`working_copy`)."""

    path: Path

    def working_copy(self, dest: Path) -> Path:
        """A sparse copy of the disk a VM may write to."""
        subprocess.run(["cp", "--sparse=always", str(self.path), str(dest)], check=True)
        return dest


def cache_root() -> Path:
    return Path(os.environ.get("CDP_IMAGE_CACHE", "/var/cache/cdp-mkimage"))


def cache_key() -> str:
    """Hash of the rescue kernel and initrd and of the files that build the disk."""
    digest = hashlib.sha256()
    for path in (image_dir() / "vmlinuz", image_dir() / "initrd.img", *_KEY_FILES):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def _stage(stage: Path) -> None:
    """Kernel, initrd (rescue initrd + the drill's initramfs layer) and init for the build."""
    layer = stage / "layer"
    layer.mkdir()
    shutil.copy2(GUEST / "init", layer / "init")
    cpio.make_cpio(layer, stage / "drill-layer.cpio.zst", 0)
    shutil.rmtree(layer)
    shutil.copyfile(image_dir() / "vmlinuz", stage / "vmlinuz")
    with (stage / "initrd.img").open("wb") as out:
        for part in (image_dir() / "initrd.img", stage / "drill-layer.cpio.zst"):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
    shutil.copy2(GUEST / "drill-init", stage / "drill-init")


def build(dest: Path, say: Callable[[str], None]) -> None:
    """Build the protected disk into dest (a new raw image of DISK_BYTES)."""
    with tempfile.TemporaryDirectory(prefix="cdp-drill-stage-") as tmp:
        stage = Path(tmp)
        _stage(stage)
        with dest.open("wb") as f:
            f.truncate(DISK_BYTES)
        script = _BUILD_SCRIPT.replace("@VG@", VG).replace("@HOST@", HOSTNAME)
        start = time.monotonic()
        with VM(VMConfig(disks=[Disk(dest)], memory_mib=1536, share=stage, network=False,
                         name="drill-build")) as vm:
            vm.check(script, timeout=1200)
        say(f"protected disk built in {time.monotonic() - start:.0f} s")


def ensure_protected_disk(say: Callable[[str], None] = print) -> ProtectedDisk:
    """The cached protected disk for the current rescue image, built first if needed."""
    folder = cache_root() / f"drill-{cache_key()}"
    disk = folder / "protected.raw"
    if not disk.is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".drill-", dir=folder.parent))
        try:
            build(tmp / "protected.raw", say)
            # A complete disk appears under its key at once, or not at all.
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    cachedir.use(folder)
    for gone in [*cachedir.evict(cache_root(), "drill", folder),
                 *cachedir.forget_stale(cache_root(), ".drill-")]:
        say(f"removed {gone} from the cache")
    return ProtectedDisk(disk)


class DiskVM(VM):
    """A VM that boots from its first disk (through its firmware and GRUB), not from the
    rescue image: mkimage.qemu only knows kernel, ISO and network boots, so the harness's
    command line is reused with the direct kernel boot taken out."""

    def start(self) -> DiskVM:
        argv = qemu_argv(replace(self.cfg, boot=KernelBoot()), self._tmp)
        for flag in ("-kernel", "-initrd", "-append"):
            i = argv.index(flag)
            del argv[i:i + 2]
        # The first disk is the boot device (otherwise UEFI tries the network first).
        i = next(n for n, a in enumerate(argv) if a.startswith(("virtio-blk-pci,drive=d0",
                                                                 "nvme,drive=d0")))
        argv[i] += ",bootindex=0"
        self._log = self.log_path.open("wb")
        self._log.write(("# " + " ".join(argv) + "\n").encode())
        self._started = time.monotonic()
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT)
        threading.Thread(target=self._reader, daemon=True).start()
        return self


@dataclass(frozen=True)
class Booted:
    vm: DiskVM
    hostname: str
    seconds: float  # from QEMU start to the marker


@contextmanager
def boot_from_disk(cfg: VMConfig, timeout: float = 300) -> Iterator[Booted]:
    """Boot cfg's first disk and wait for the drill marker; power off when the block ends
    (kill, keeping the console log, if it raises)."""
    vm = DiskVM(cfg)
    vm.start()
    try:
        match = vm.wait_for(MARKER, timeout=timeout)
        booted = Booted(vm, match.group(1).decode(), time.monotonic() - vm._started)
        yield booted
    except BaseException:
        vm.kill(keep_log=True)
        raise
    vm.shutdown()


def identity(vm: VM, disk: str) -> dict[str, Any]:
    """What a restore must preserve, read inside a VM: the disk and partition GUIDs (type,
    unique GUID, name), the file system UUIDs by label, and the PV, VG and LV UUIDs."""
    table = json.loads(vm.check(f"sfdisk --json /dev/{disk}"))["partitiontable"]
    fs = json.loads(vm.check(f"lsblk -J -o LABEL,UUID,FSTYPE /dev/{disk}"))
    pvs = json.loads(vm.check("lvm pvs --reportformat json -o pv_uuid,vg_name,vg_uuid"))
    lvs = json.loads(vm.check(f"lvm lvs --reportformat json -o lv_name,lv_uuid {VG}"))
    return {
        "disk_guid": table["id"],
        "partitions": [{"type": p["type"], "uuid": p["uuid"], "name": p.get("name", "")}
                       for p in table["partitions"]],
        "filesystems": {d["label"]: {"uuid": d["uuid"], "fstype": d["fstype"]}
                        for d in _walk(fs["blockdevices"]) if d.get("label")},
        "pv": [{"pv_uuid": p["pv_uuid"], "vg_name": p["vg_name"], "vg_uuid": p["vg_uuid"]}
               for p in pvs["report"][0]["pv"] if p["vg_name"] == VG],
        "lvs": {lv["lv_name"]: lv["lv_uuid"] for lv in lvs["report"][0]["lv"]},
    }


def _walk(devices: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for dev in devices:
        yield dev
        yield from _walk(dev.get("children", []))


def main() -> None:
    disk = ensure_protected_disk(lambda msg: print(msg, file=sys.stderr))
    print(disk.path)


if __name__ == "__main__":
    main()
