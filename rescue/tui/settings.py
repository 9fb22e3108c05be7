"""What the TUI is started with: boot options, dry-run switches and the injectable side
effects (shell, reboot/power off) that tests replace with recorders."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cdpcore import runcmd

from ..bootopts import BootOptions, with_defaults

#: Terminals that get 16 ANSI colours and ASCII-only borders (Linux console, serial lines).
BASIC_TERMS = ("linux", "vt100", "vt102", "vt220", "dumb", "ansi")
PowerAction = str  # "reboot" or "poweroff"


def run_shell() -> None:
    """The operator's shell on the terminal the app was suspended from."""
    shell = os.environ.get("SHELL") or "/bin/sh"
    subprocess.call([shell if shutil.which(shell) else "/bin/sh"])


def power(action: PowerAction) -> None:
    """Reboot or power off. The rescue image's init is a shell script, not systemd: there
    the restored disks are synced and busybox (always in the image) does it directly."""
    if Path("/run/systemd/system").is_dir():
        runcmd.run(["systemctl", action])
        return
    runcmd.run(["sync"])
    runcmd.run([action, "-f"] if shutil.which(action) else ["busybox", action, "-f"])


def is_basic_terminal(term: str, tty: str | None) -> bool:
    """Serial consoles (ttyS*, ttyAMA*, hvc*) and TERM=linux/vt100 get the basic look."""
    if tty and os.path.basename(tty).startswith(("ttyS", "ttyAMA", "ttyUSB", "hvc")):
        return True
    return term.split("-")[0] in BASIC_TERMS


def boot_options_from(cmdline_path: str = "/proc/cmdline", *,
                      lenient: bool = False) -> BootOptions:
    """The boot options of the kernel command line and the image's baked defaults
    (`lenient`: see bootopts.with_defaults; the TUI's operator can type the server in)."""
    try:
        text = Path(cmdline_path).read_text()
    except OSError:
        text = ""
    return with_defaults(text, lenient=lenient)


@dataclass
class Settings:
    boot: BootOptions = field(default_factory=BootOptions)
    #: A pinned server certificate fingerprint (hex SHA-256); a different one is refused.
    fingerprint: str | None = None
    #: Do not run ip/udhcpc: the commands are only shown (tests, trying the UI out).
    dry_run_network: bool = False
    #: Image files offered as restore targets besides the discovered disks.
    targets: list[str] = field(default_factory=list)
    #: List local disks with lsblk (off in tests: only `targets` are offered then).
    discover: bool = True
    state_dir: str | None = None
    #: 16 colours and ASCII borders; None: decided from TERM and the tty.
    basic: bool | None = None
    shell: Callable[[], None] = run_shell
    power: Callable[[PowerAction], None] = power

    def basic_mode(self) -> bool:
        if self.basic is not None:
            return self.basic
        try:
            tty: str | None = os.ttyname(0)
        except OSError:
            tty = None
        return is_basic_terminal(os.environ.get("TERM", ""), tty)
