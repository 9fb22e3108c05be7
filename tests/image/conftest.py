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

