"""Growing a restored filesystem to fill its enlarged partition (a post-step of a restore
onto a larger disk). The partition is reached through a loop device over its byte range
(cdpcore.loopdev), which works the same on image files, on disks whose partition nodes do
not exist yet, and on real disks.

ext2/3/4: `e2fsck -f` (resize2fs insists on a freshly checked filesystem) then
`resize2fs`; XFS grows only while mounted: it is mounted on a temporary directory for
`xfs_growfs`, with `nouuid` (a mounted filesystem of the same UUID, the original or a
clone of it, must not stop it). Other filesystems are left at their size, with a note
saying so.
"""

from __future__ import annotations

import tempfile

from cdpcore import runcmd
from cdpcore.errors import CommandFailed
from cdpcore.loopdev import range_loop

GROWABLE = ("ext2", "ext3", "ext4", "xfs")
#: e2fsck exit codes 0-3 mean clean or repaired; 4 and above mean errors are left.
_E2FSCK_OK = 4


def grow(path: str, offset: int, size: int, fstype: str) -> None:
    """Grow the `fstype` filesystem at `offset` of `path` to `size` bytes."""
    with range_loop(path, offset, size) as dev:
        if fstype in ("ext2", "ext3", "ext4"):
            argv = ["e2fsck", "-f", "-y", dev]
            proc = runcmd.run(argv, check=False)
            if proc.returncode >= _E2FSCK_OK:
                raise CommandFailed(argv, proc.returncode,
                                    proc.stderr.decode(errors="replace")
                                    + proc.stdout.decode(errors="replace"))
            runcmd.run(["resize2fs", dev])
        elif fstype == "xfs":
            with tempfile.TemporaryDirectory(prefix="cdp-growfs-") as mnt:
                # nouuid: XFS refuses a second mounted filesystem of one UUID, and the
                # original (or a clone of it) may be mounted here (a restore into an image
                # file on the protected machine itself).
                runcmd.run(["mount", "-t", "xfs", "-o", "nouuid", dev, mnt])
                try:
                    runcmd.run(["xfs_growfs", mnt])
                finally:
                    runcmd.run(["umount", mnt])
        else:
            raise ValueError(f"cannot grow a {fstype} filesystem (only {', '.join(GROWABLE)})")
