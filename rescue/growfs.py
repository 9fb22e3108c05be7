"""Growing a restored filesystem to fill its enlarged partition (a post-step of a restore
onto a larger disk). The partition is reached through a loop device over its byte range
(cdpcore.loopdev), which works the same on image files, on disks whose partition nodes do
not exist yet, and on real disks.

ext2/3/4: its journal is replayed (as a mount would: a snapshot of a mounted filesystem
needs it), then `e2fsck -f -n` checks it without changing it; a filesystem with errors is
left as the point holds it, at its old size, with a note (`e2fsck -y` would repair it
unasked: entries cleared, files moved to lost+found in a restore that says it is byte
for byte); else `e2fsck -f` (resize2fs insists on a freshly checked filesystem) then
`resize2fs`; XFS grows only while mounted: it is mounted on a temporary directory for
`xfs_growfs`, with `nouuid` (a mounted filesystem of the same UUID, the original or a
clone of it, must not stop it); one that does not mount is left at its old size, with a
note. Other filesystems are left at their size, with a note
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
#: 8 and above: e2fsck could not do its job (operational or usage error, cancelled).
_E2FSCK_FAILED = 8


def _e2fsck(*args: str) -> tuple[int, str]:
    """Run e2fsck; its exit status and output. 8 and above (an operational error, a usage
    error, cancelled) fail."""
    argv = ["e2fsck", *args]
    proc = runcmd.run(argv, check=False)
    text = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    if proc.returncode >= _E2FSCK_FAILED:
        raise CommandFailed(argv, proc.returncode, text)
    return proc.returncode, text


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


def grow(path: str, offset: int, size: int, fstype: str) -> list[str]:
    """Grow the `fstype` filesystem at `offset` of `path` to `size` bytes. Returns notes:
    why a filesystem was not grown."""
    with range_loop(path, offset, size) as dev:
        if fstype in ("ext2", "ext3", "ext4"):
            _e2fsck("-E", "journal_only", "-p", dev)
            status, text = _e2fsck("-f", "-n", dev)
            if status:
                lines = [line for line in text.splitlines() if line.strip()][:3]
                return [f"{fstype} filesystem at byte {offset} of {path} not grown: e2fsck "
                        "finds errors in it (" + "; ".join(lines) + "); it is left at its "
                        "old size, unrepaired: check it (e2fsck -f), then grow it "
                        "(resize2fs)"]
            argv = ["e2fsck", "-f", "-y", dev]
            status, text = _e2fsck(*argv[1:])
            if status >= _E2FSCK_OK:
                raise CommandFailed(argv, status, text)
            runcmd.run(["resize2fs", dev])
        elif fstype == "xfs":
            with tempfile.TemporaryDirectory(prefix="cdp-growfs-") as mnt:
                # nouuid: XFS refuses a second mounted filesystem of one UUID, and the
                # original (or a clone of it) may be mounted here (a restore into an image
                # file on the protected machine itself).
                try:
                    runcmd.run(["mount", "-t", "xfs", "-o", "nouuid", dev, mnt])
                except CommandFailed as exc:
                    return [f"xfs filesystem at byte {offset} of {path} not grown: it does "
                            f"not mount ({_first_line(exc.stderr)}); it is left at its old size: "
                            "check it (xfs_repair), then grow it (xfs_growfs)"]
                try:
                    runcmd.run(["xfs_growfs", mnt])
                finally:
                    runcmd.run(["umount", mnt])
        else:
            raise ValueError(f"cannot grow a {fstype} filesystem (only {', '.join(GROWABLE)})")
    return []
