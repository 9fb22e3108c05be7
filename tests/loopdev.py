"""Loop devices for the tests that need a real block device or a mounted filesystem
(this machine has loop devices and mounts them, but has no device-mapper)."""

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


@contextmanager
def mounted_loop(image: Path, mountpoint: Path, *options: str, mkfs: list[str] | None = None,
                 mount_options: tuple[str, ...] = ()) -> Iterator[str]:
    """`image` attached as a loop device (losetup `options`), made a filesystem with the
    `mkfs` command if given, and mounted on `mountpoint`; yields the device. Afterwards
    thawed (for a test that froze it), unmounted and detached."""
    with attached_loop(image, *options) as dev:
        if mkfs:
            runcmd.run([*mkfs, dev])
        runcmd.run(["mount", *mount_options, dev, str(mountpoint)])
        try:
            yield dev
        finally:
            runcmd.run(["fsfreeze", "--unfreeze", str(mountpoint)], check=False)
            runcmd.run(["umount", str(mountpoint)])
