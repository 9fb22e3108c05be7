"""cdpcore.loopdev on real loop devices: the range shown, and no device left behind, also
by a process killed while it holds one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cdpcore import runcmd
from cdpcore.loopdev import range_loop

MIB = 1024 * 1024


def loops_over(image: Path) -> str:
    return runcmd.run_text(["losetup", "--associated", str(image)]).strip()


def wait_gone(image: Path) -> str:
    """The loop devices still over `image` after up to 5 s (the kernel may clear one a
    moment after its last close)."""
    deadline = time.monotonic() + 5
    while (left := loops_over(image)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_a_range_loop_shows_its_range_and_is_gone_afterwards(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    data = os.urandom(4 * MIB)
    image.write_bytes(data)
    with range_loop(str(image), MIB, 2 * MIB, read_only=True, direct_io=True) as dev:
        with open(dev, "rb") as f:
            assert f.read() == data[MIB:3 * MIB]
        assert dev in loops_over(image)
    assert wait_gone(image) == ""


def test_a_killed_process_leaves_no_loop_device(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4 * MIB))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from cdpcore.loopdev import range_loop\n"
         "with range_loop(sys.argv[1], 1048576, 1048576, read_only=True) as dev:\n"
         "    print(dev, flush=True)\n"
         "    time.sleep(600)\n",
         str(image)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        dev = holder.stdout.readline().strip()
        assert dev.startswith("/dev/loop") and dev in loops_over(image)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert wait_gone(image) == ""
