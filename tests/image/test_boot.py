"""Boot the built rescue image the ways a failed server would: the hybrid ISO on BIOS
(SeaBIOS) and UEFI (OVMF), the same ISO as a USB stick, and a network boot (QEMU's TFTP +
iPXE with the PXE set). Each boot must reach the ready line with the disks and the NIC
detected, and then the TUI's first screen on the serial console. The times are reported
in pytest's terminal summary (measured, not asserted: the target is under 45 s of
software emulation to the TUI; see docs/IMAGE.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mkimage.qemu import VM, Disk, IsoBoot, NetBoot, VMConfig
from tests.summaries import BOOT_TIMES

#: The title of the TUI's first screen, as it reaches the serial console (TERM=vt100).
TUI_FIRST_SCREEN = re.compile(rb"1/6 Network")

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> list[Disk]:
    d = tmp_path_factory.mktemp("disks")
    for name in ("a.img", "b.img"):
        with (d / name).open("wb") as f:
            f.truncate(16 << 20)
    return [Disk(d / "a.img"), Disk(d / "b.img", bus="nvme")]


@pytest.mark.parametrize(("name", "boot", "firmware"), [
    ("bios-cd", IsoBoot(), "bios"),
    ("uefi-cd", IsoBoot(), "uefi"),
    ("bios-usb", IsoBoot(as_usb=True), "bios"),
    ("pxe", NetBoot(), "bios"),
])
def test_boot_reaches_ready(rescue_image: Path, disks: list[Disk], name: str,
                            boot: IsoBoot | NetBoot, firmware: str,
                            record_property: Callable[[str, object], None]) -> None:
    cfg = VMConfig(disks=disks, boot=boot, firmware=firmware,  # type: ignore[arg-type]
                   name=f"boot-{name}")
    vm = VM(cfg).start()
    try:
        ready = vm.wait_ready(timeout=180)
        vm.wait_for(TUI_FIRST_SCREEN, timeout=180)
        tui_seconds = vm.elapsed()
    except BaseException:
        vm.kill(keep_log=True)
        raise
    vm.kill(keep_log=False)  # nothing more to see: the boot is what this test checks
    record_property(BOOT_TIMES, (name, ready.seconds, tui_seconds))
    # Booted as a USB stick, the rescue medium itself is a disk too (sda).
    usb = ["sda"] if isinstance(boot, IsoBoot) and boot.as_usb else []
    assert sorted(ready.list("disks")) == sorted(["nvme0n1", "vda", *usb])
    assert ready.list("nics") == ["eth0"]
    assert ready.list("ip") == ["10.0.2.15/24"]
    assert ready.fields["auto"] == "0"
    assert ready.fields["ui"] == "tui"
