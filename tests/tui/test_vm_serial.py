"""The rescue console inside QEMU on the serial console, as the boot image starts it
(TERM=vt100): connect to a real server through trust on first use, list the points, and
open a shell with ctrl+z.
Keys go in over the serial line; the screen is read from it with escape sequences removed."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mkimage.qemu import GUEST_SERVER_IP, VM, Forward, KernelBoot, VMConfig
from rescue.tui.screens.points import when

from .conftest import PASS, Env

pytestmark = pytest.mark.vm
GUEST_PORT = 8443
#: CSI and other escape sequences, and the charset switches of a vt100.
_ESCAPES = re.compile(rb"\x1b(\[[0-?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78]|\][^\x07]*\x07)")


def image(out: Path) -> KernelBoot:
    """The rescue image with this tree's code, built privately (mkimage caches the rest)."""
    subprocess.run([sys.executable, "-m", "mkimage", "build", "--out", str(out)], check=True,
                   cwd=Path(__file__).resolve().parents[2], capture_output=True)
    return KernelBoot(kernel=out / "vmlinuz", initrd=out / "initrd.img",
                      append="console=ttyS0,115200n8 quiet loglevel=3 panic=-1")


class Serial:
    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def text(self, start: int = 0) -> str:
        with self.vm._cond:  # the harness's buffer of everything the console printed
            raw = bytes(self.vm._buf[start:])
        return _ESCAPES.sub(b"", raw).decode(errors="replace")

    def wait_for(self, needle: str, timeout: float = 300,
                 after: Callable[[str], bool] | None = None) -> None:
        """Wait for text on the screen (escape sequences removed: a repaint may put style
        changes inside a line), or for `after` to accept all the text so far."""
        deadline = time.monotonic() + timeout
        while not (after(self.text()) if after else needle in self.text()):
            if not self.vm.alive() or time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} did not appear on the serial console; it "
                                     f"ends with:\n{self.text()[-3000:]}")
            time.sleep(0.5)

    def keys(self, data: str) -> None:
        self.vm._send(data)  # the harness has no public way to type on the console


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
        serial.wait_for("1/6 Network")
        serial.keys("\x0e")  # ctrl+n: the init already brought the network up
        serial.wait_for("2/6 Connect")
        serial.keys(PASS + "\r")
        serial.wait_for("Trust this server?")
        serial.wait_for(env.fingerprint)  # shown whole, on one line, before anything is sent
        serial.keys("y")
        serial.wait_for("3/6 Host and recovery point")
        serial.wait_for("web1: 1 of 1 points")
        serial.wait_for(when(env.points[0].created)[:16])
        serial.wait_for("disk vda.img 16.0 MiB gpt")
        serial.keys("\x1a")  # ctrl+z: a shell on the same console (the harness powers off there)
        serial.wait_for("#", after=lambda shown: shown.rstrip().endswith("#"))
        serial.keys("echo SHELL-$((6 * 7))\n")
        serial.wait_for("SHELL-42")
