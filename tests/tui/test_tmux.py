"""One run in a real terminal: `rescue tui` under tmux at 80x24 with TERM=linux, driven
with send-keys and read with capture-pane: connect to a real server and list the points."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdpcore.points import local_time

from .conftest import PASS, Env

REPO = Path(__file__).resolve().parents[2]


class Tmux:
    def __init__(self, socket: Path) -> None:
        self.socket = str(socket)

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], check=True,
                              capture_output=True, text=True).stdout

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-S", self.socket, "has-session", "-t", "tui"],
                              capture_output=True).returncode == 0

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "tui")

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.screen()
            if needle in shown:
                return shown
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} did not appear; the screen shows:\n{self.screen()}")


@pytest.mark.skipif(subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
                    reason="tmux is not installed")
def test_connect_and_list_points_in_tmux_with_term_linux(env: Env) -> None:
    tmux = Tmux(env.tmp / "tmux.sock")
    argv = [sys.executable, "-m", "rescue", "tui", "--server", env.url, "--token", env.token,
            "--ca", env.ca, "--target", str(env.target), "--no-discover", "--dry-run-network",
            "--cmdline", "/dev/null", "--state-dir", str(env.tmp / "state")]
    command = f"cd {shlex.quote(str(REPO))} && TERM=linux exec " + shlex.join(argv)
    tmux("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", command)
    try:
        assert tmux("display", "-p", "-t", "tui", "#{window_width}x#{window_height}") \
            .strip() == "80x24"
        shown = tmux.wait_for("1/6 Network")
        assert shown.isascii(), [c for c in shown if not c.isascii()]
        tmux("send-keys", "-t", "tui", "C-n")
        shown = tmux.wait_for("2/6 Connect")
        assert shown.isascii(), [c for c in shown if not c.isascii()]
        print(shown)
        tmux("send-keys", "-t", "tui", "-l", PASS)
        tmux("send-keys", "-t", "tui", "Enter")
        shown = tmux.wait_for("3/6 Host and recovery point")
        shown = tmux.wait_for("web1: 1 of 1 points")
        assert local_time(env.points[0].created)[:16] in shown
        shown = tmux.wait_for("disk vda.img")
        assert "disk vda.img 16.0 MiB gpt" in shown
        assert shown.isascii(), [c for c in shown if not c.isascii()]
        tmux("send-keys", "-t", "tui", "Enter")
        tmux.wait_for("new.img")
        tmux("send-keys", "-t", "tui", "Enter")  # source row: on to its targets
        time.sleep(1)  # keys sent at once can arrive before the focus has moved
        tmux("send-keys", "-t", "tui", "Enter")  # pick new.img
        shown = tmux.wait_for("chosen by you")
        assert shown.isascii(), [c for c in shown if not c.isascii()]
        print(shown)
        tmux("send-keys", "-t", "tui", "C-n")
        shown = tmux.wait_for("5/6 Review")
        assert shown.isascii(), [c for c in shown if not c.isascii()]
        print(shown)
        tmux("send-keys", "-t", "tui", "-l", "web1")
        tmux("send-keys", "-t", "tui", "Enter")
        shown = tmux.wait_for("Restored 16.0 MiB")
        assert shown.isascii(), [c for c in shown if not c.isascii()]
        print(shown)
        tmux("send-keys", "-t", "tui", "C-q")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and tmux.alive():
            time.sleep(0.2)
        assert not tmux.alive()  # ctrl+q quit the app, which ended the session
    finally:
        subprocess.run(["tmux", "-S", tmux.socket, "kill-server"], capture_output=True)
