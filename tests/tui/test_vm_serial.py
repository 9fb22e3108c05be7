"""The rescue console inside QEMU on the serial console, as the boot image starts it
(TERM=vt100): connect to a real server through trust on first use, list the points, and
open a shell with ctrl+z; and the whole restore of an older point onto a blank virtio disk,
checked byte for byte on the host once the VM has powered itself off.
Keys go in over the serial line; the screen is read from it with escape sequences removed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cdpcore.points import local_time
from mkimage.qemu import GUEST_SERVER_IP, VM, Disk, Forward, KernelBoot, Serial, VMConfig
from tests.rescue.pointmaker import make_point

from .conftest import MIB, PASS, Env, sh
from .serial_steps import SHELL, connect, map_only_target, review_and_start
from .test_happy_path import table

pytestmark = pytest.mark.vm
GUEST_PORT = 8443


def image(out: Path) -> KernelBoot:
    """The rescue image with this tree's code, built privately (mkimage caches the rest)."""
    subprocess.run([sys.executable, "-m", "mkimage", "build", "--out", str(out)], check=True,
                   cwd=Path(__file__).resolve().parents[2], capture_output=True)
    return KernelBoot(kernel=out / "vmlinuz", initrd=out / "initrd.img",
                      append="console=ttyS0,115200n8 quiet loglevel=3 panic=-1")


def test_serial_console_connects_with_tofu_and_lists_points(env: Env, cdp_server: Any,
                                                            tmp_path: Path) -> None:
    url = f"https://{GUEST_SERVER_IP}:{GUEST_PORT}"
    boot = image(tmp_path / "image")
    cfg = VMConfig(boot=boot, forwards=[Forward(GUEST_PORT, cdp_server.port)],
                   extra_append=f"ip=dhcp cdp.server={url} cdp.token={env.token}",
                   name="tui-serial")
    with VM(cfg) as vm:
        assert vm.ready is not None and vm.ready.fields["ui"] == "tui"
        serial = Serial(vm)
        connect(serial, PASS, env.fingerprint)  # the URL and token came with the boot
        serial.wait_for("web1: 1 of 1 points")
        serial.wait_for(local_time(env.points[0].created)[:16])
        serial.wait_for("disk vda.img 16.0 MiB gpt")
        serial.keys(SHELL)  # ctrl+z: a shell on the same console (the harness powers off there)
        serial.wait_for("#", after=lambda shown: shown.rstrip().endswith("#"))
        serial.keys("echo SHELL-$((6 * 7))\n")
        serial.wait_for("SHELL-42")


def test_serial_console_restores_an_older_point_byte_exact(env: Env, cdp_server: Any,
                                                           tmp_path: Path) -> None:
    # The point to restore is the fixture's; a newer one (new partition GUIDs, other data)
    # is the latest, so restoring it by mistake would show in the bytes and the GUIDs.
    chosen = env.points[0]
    kept = tmp_path / "chosen.img"
    shutil.copyfile(env.source, kept)
    sh("sgdisk", "-G", str(env.source))
    with open(env.source, "r+b") as f:
        f.seek(5 * MIB)
        f.write(b"\xa5" * MIB)
    # Seconds apart at least: the screens name points to the second.
    latest = make_point(env.agent, "web1", env.codec, [str(env.source)],
                        created=chosen.created + 30)
    target = tmp_path / "disk.img"
    sh("truncate", "-s", str(24 * MIB), str(target))  # blank and larger than the source
    url = f"https://{GUEST_SERVER_IP}:{GUEST_PORT}"
    cfg = VMConfig(boot=image(tmp_path / "image"), disks=[Disk(target)],
                   forwards=[Forward(GUEST_PORT, cdp_server.port)],
                   extra_append=f"ip=dhcp cdp.server={url} cdp.token={env.token}",
                   name="tui-serial-restore")
    with VM(cfg) as vm:
        assert vm.ready is not None and vm.ready.list("disks") == ["vda"]
        serial = Serial(vm)
        connect(serial, PASS, env.fingerprint)
        serial.wait_for(f"web1: 2 of 2 points. Enter: restore {local_time(latest.created)}")
        serial.wait_for("disk vda.img 16.0 MiB gpt")
        serial.keys("\x1b[B")  # down: from the latest (on top) to the older point
        serial.wait_for(f"Enter: restore {local_time(chosen.created)}")
        serial.keys("\r")
        map_only_target(serial, "vda", 24 * MIB)
        review_and_start(serial, (f"point {chosen.point_id[:12]} ({local_time(chosen.created)})",
                                  "vda.img -> /dev/vda (24.0 MiB, chosen by you)",
                                  "Type /dev/vda or vda or the host name 'web1'"), "/dev/vda")
        serial.wait_for("overall")
        serial.wait_for("Restored 16.0 MiB of host web1 in ", timeout=900)
        serial.wait_for("Power off")
        serial.keys("\t\r")  # Reboot has the focus; tab to Power off
        deadline = time.monotonic() + 120
        while vm.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not vm.alive(), "the VM did not power off from the summary screen"
    # The target holds the chosen point: its partition table (GUIDs, types, names, bounds;
    # the backup GPT moved to the larger disk's end), boot code and every partition's bytes.
    src_table, dst_table = table(kept), table(target)
    assert dst_table.pop("lastlba") == 24 * MIB // 512 - 34
    src_table.pop("lastlba")
    assert src_table == dst_table
    assert table(env.source)["id"] != dst_table["id"]
    assert "No problems found" in sh("sgdisk", "-v", str(target))
    src, dst = kept.read_bytes(), target.read_bytes()
    assert len(dst) == 24 * MIB
    assert src[:440] == dst[:440]
    for part in src_table["partitions"]:
        start, size = part["start"] * 512, part["size"] * 512
        assert src[start:start + size] == dst[start:start + size]
