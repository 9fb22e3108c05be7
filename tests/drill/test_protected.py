"""The drill's protected server disk (tests/drill/protected.py) boots on its own through
GRUB under BIOS and UEFI, with the layout the drill relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.qemu import Disk, VMConfig

from .protected import HOSTNAME, VG, ProtectedDisk, boot_from_disk, identity

pytestmark = [pytest.mark.vm, pytest.mark.slow]

ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_protected_disk_boots_with_its_layout(protected_disk: ProtectedDisk, tmp_path: Path,
                                              firmware: str) -> None:
    disk = protected_disk.working_copy(tmp_path / "disk.raw")
    cfg = VMConfig(disks=[Disk(disk)], firmware=firmware,  # type: ignore[arg-type]
                   network=False, name=f"drill-protected-{firmware}")
    with boot_from_disk(cfg) as booted:
        assert booted.hostname == HOSTNAME
        ident = identity(booted.vm, "vda")
        mounts = booted.vm.check("findmnt -rn -o TARGET,SOURCE,FSTYPE")
        tables = booted.vm.check("dmsetup table")
        agent = booted.vm.check("cdp-agent --help")
    assert [(p["type"], p["name"]) for p in ident["partitions"]] == [
        (BIOS_BOOT, "bios-boot"), (ESP, "esp"), (LINUX, "boot"), (LVM, "lvm")]
    assert sorted(ident["lvs"]) == ["data", "data-era", "root"]
    assert [p["vg_name"] for p in ident["pv"]] == [VG]
    assert {k: v["fstype"] for k, v in ident["filesystems"].items()} == {
        "ESP": "vfat", "boot": "ext4", "root": "ext4", "data": "ext4"}
    found = {line.split()[0]: line.split()[1:] for line in mounts.splitlines()}
    assert found["/"] == [f"/dev/mapper/{VG}-root", "ext4"]
    assert found["/boot"][1] == "ext4"
    assert "/boot/efi" not in found  # noauto: mounted only for boot loader updates
    # /data is used through the dm-era device, so the agent can track its writes.
    assert found["/data"] == ["/dev/mapper/cdpera-data", "ext4"]
    assert " era " in next(t for t in tables.splitlines() if t.startswith("cdpera-data:"))
    assert "Hot-copy agent" in agent
