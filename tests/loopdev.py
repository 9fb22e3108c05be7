"""Loop devices for the tests that need a real block device (this machine has loop
devices but no device-mapper)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cdpcore import runcmd


@contextmanager
def attached_loop(image: Path, *options: str) -> Iterator[str]:
    """A loop device over `image` (losetup `options`, e.g. -r, -o OFFSET), detached
    afterwards, also when the body fails."""
    dev = runcmd.run_text(["losetup", "-f", "--show", *options, str(image)]).strip()
    try:
        yield dev
    finally:
        runcmd.run(["losetup", "-d", dev], check=False)
