"""One image build shared by the image tests (cached: seconds when only code changed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mkimage.qemu import image_dir

CACHE = Path(os.environ.get("CDP_IMAGE_CACHE", "/var/cache/cdp-mkimage"))


@pytest.fixture(scope="session")
def rescue_image() -> Path:
    """Build kernel, initrd, ISO and PXE set into image_dir() (out/ by default)."""
    out = image_dir()
    subprocess.run([sys.executable, "-m", "mkimage", "build", "--cache", str(CACHE),
                    "--out", str(out), "--iso", "--pxe"], check=True)
    return out


#: The property test_boot records: (boot name, seconds to the ready line, seconds to the
#: TUI). A report's properties reach the summary also from a pytest-xdist worker.
BOOT_TIMES = "boot_times"
BOOT_TARGET_S = 45.0


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report the boot times of this run, also under -q (issue #7's target: < 45 s)."""
    times = sorted(value for report in terminalreporter.stats.get("passed", [])
                   if report.when == "call"
                   for key, value in report.user_properties if key == BOOT_TIMES)
    if not times:
        return
    terminalreporter.section("rescue image boot times (QEMU software emulation)")
    for name, ready, tui in times:
        verdict = "met" if tui < BOOT_TARGET_S else "MISSED"
        terminalreporter.write_line(f"{name}: ready line {ready:.1f} s, TUI {tui:.1f} s "
                                    f"(target < {BOOT_TARGET_S:.0f} s: {verdict})")
