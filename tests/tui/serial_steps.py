"""Steps of a restore through the rescue TUI on a VM's serial console (mkimage.qemu.Serial),
typed as an operator would: shared by the TUI's VM tests and the disaster drill."""

from __future__ import annotations

from collections.abc import Sequence

from cdpcore.units import human
from mkimage.qemu import Serial
from rescue.tui.screens.connect import FIELDS

NEXT = "\x0e"  # ctrl+n: the screens' "next" key
SHELL = "\x1a"  # ctrl+z: a shell on the same console


def wait_focus(serial: Serial, placeholder: str, start: int) -> None:
    """Wait until the empty input showing `placeholder` has the focus: keys typed before
    go to the widget that had it. Only the focused input's cursor blinks, and each blink
    repaints it (a repaint that does not settle, so Serial.quiet cannot tell). Three paints
    after start, not two: a screen still being drawn at `start` may paint an unfocused
    input twice (the drill once typed the token into the URL field that way)."""
    serial.wait_for(placeholder, start=start, after=lambda shown: shown.count(placeholder) >= 3)


def connect(serial: Serial, passphrase: str, fingerprint: str, url: str = "",
            token: str = "") -> None:
    """From the first screen to the points: accept the network the init brought up, type
    the server URL and the token unless the kernel command line filled them in, then the
    passphrase, and trust the server's certificate on first use once its fingerprint is
    shown."""
    hint = {key: text for key, _, text, _ in FIELDS}
    serial.wait_for("1/6 Network")
    at = serial.mark()
    serial.keys(NEXT)
    serial.wait_for("2/6 Connect", start=at)
    # Each field is typed once it has the focus (the screen focuses the first empty one,
    # Enter the next): Enter moves the focus by a message, after keys already typed.
    for key, value in (("url", url), ("token", token), ("passphrase", passphrase)):
        if value:
            wait_focus(serial, hint[key], at)
            at = serial.mark()
            serial.keys(value + "\r")
    serial.wait_for("Trust this server?")
    serial.wait_for(fingerprint)  # shown whole, on one line, before anything is sent
    serial.keys("y")
    serial.wait_for("3/6 Host and recovery point")


def map_only_target(serial: Serial, name: str, size: int) -> None:
    """The Map screen of a point with one source disk that nothing maps automatically:
    pick the one selectable target, `name` of `size` bytes."""
    serial.wait_for("4/6 Map source disks to target disks")
    serial.wait_for(f"{name:12} {human(size):>10}")  # the blank disk, selectable
    at = serial.mark()
    serial.keys("\r")  # the source row: to its targets
    serial.quiet(at)
    serial.keys("\r")  # pick the highlighted (the first selectable) target
    serial.wait_for("chosen by you", start=at)
    serial.wait_for(f"{name} ({human(size)})", start=at)
    serial.wait_for("ctrl+n: review the plan", start=at)


def review_and_start(serial: Serial, shown: Sequence[str], confirm: str) -> None:
    """From the Map screen: review the plan (each of `shown` must be on it), type the
    confirmation and wait for the restore to begin."""
    at = serial.mark()
    serial.keys(NEXT)
    serial.wait_for("5/6 Review", start=at)
    for text in shown:
        serial.wait_for(text, start=at)
    serial.keys(confirm + "\r")
    serial.wait_for("6/6 Restore", start=at)
    serial.wait_for("restoring ...", start=at)
