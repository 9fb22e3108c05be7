"""Resume state of a restore: which actions finished and, per streamed volume, how many
leading blocks are written, verified and synced to the target. Keyed by the plan's
fingerprint (point + targets + actions), so a state is never applied to another restore.
The fingerprint names a target by path, size and serial, which an image file made again,
a loop device attached to another file or a disk without serial swapped in keep: so the
state also records what each target is (target_identity) and keyed digests of a few
regions the run had written there when it was saved (read_mark: each disk's first 64 KiB
and the last synced block of each volume), and a resume checks both (engine) before it
skips anything.

Written atomically (temporary file, fsync, rename): a power loss leaves the old state or
the new one, never a torn file. Kept next to an image-file target, or on the rescue
system's RAM disk (/run) for block devices.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cdpcore import durable
from cdpcore.errors import FormatError, UsageError

from .plan import Plan

RAM_STATE_DIR = "/run/cdp-rescue"
#: Bytes at the start of each target disk whose digest the state records (the MBR, the
#: GPT header and array with 512- or 4096-byte sectors, boot code, LVM labels).
HEAD_MARK_BYTES = 64 * 1024
#: (path, offset, length, keyed digest in hex) of a region of a target.
Mark = tuple[str, int, int, str]


@dataclass
class RestoreState:
    fingerprint: str
    point_id: str
    done_actions: list[str] = field(default_factory=list)
    #: volume name -> number of leading blocks written, verified and synced
    volume_blocks: dict[str, int] = field(default_factory=dict)
    #: the target paths this restore writes: a fresh restore onto any of them makes this
    #: state stale (its finished steps were overwritten)
    targets: list[str] = field(default_factory=list)
    #: target disk path -> what it was when the state was saved (target_identity)
    identities: dict[str, str] = field(default_factory=dict)
    #: regions of the targets and the digests of what the run had written there when the
    #: state was saved: a target that no longer holds them is not resumed
    marks: list[Mark] = field(default_factory=list)


def target_identity(path: str) -> str:
    """What the target at `path` is now: an image file's filesystem and inode; a block
    device's number and, for a loop device, its backing file's filesystem and inode."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return f"file {st.st_dev}:{st.st_ino}"
    number = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    try:
        backing = Path(f"/sys/dev/block/{number}/loop/backing_file").read_text().strip()
    except OSError:
        return f"block device {number}"
    try:
        bst = os.stat(backing)
    except OSError:
        return f"block device {number} (loop on {backing})"
    return f"block device {number} (loop on {backing}, file {bst.st_dev}:{bst.st_ino})"


def read_mark(path: str, offset: int, length: int,
              digest: Callable[[bytes], bytes]) -> str:
    """The keyed digest (hex) of `length` bytes at `offset` of `path` (fewer if it ends
    first: then it differs)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = bytearray()
        while len(data) < length:
            got = os.pread(fd, length - len(data), offset + len(data))
            if not got:
                break
            data += got
    finally:
        os.close(fd)
    return digest(bytes(data)).hex()


def default_state_dir(plan: Plan) -> str:
    files = [d.target.path for d in plan.disks if d.target.is_file]
    if files and len(files) == len(plan.disks):
        return str(Path(files[0]).parent)
    return RAM_STATE_DIR


class StateStore:
    def __init__(self, directory: str | os.PathLike[str], plan: Plan) -> None:
        self.path = Path(directory) / f"{plan.files_stem()}.state.json"
        self.fingerprint = plan.fingerprint()
        self.point_id = plan.point_id
        self.targets = [d.target.path for d in plan.disks]

    def load(self) -> RestoreState | None:
        """The saved state of this very plan, or None (absent, or of another plan)."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise FormatError(f"resume state {self.path} is damaged ({exc}): delete it to "
                              "restart the restore from the beginning") from None
        if doc.get("fingerprint") != self.fingerprint:
            return None
        try:
            return RestoreState(
                fingerprint=doc["fingerprint"], point_id=doc["point_id"],
                done_actions=list(doc["done_actions"]),
                volume_blocks={k: int(v) for k, v in doc["volume_blocks"].items()},
                targets=list(self.targets),
                # absent in a state an earlier version wrote: it is not resumed (engine)
                identities={str(k): str(v) for k, v in doc.get("identities", {}).items()},
                marks=[(str(p), int(o), int(n), str(d)) for p, o, n, d in doc.get("marks", [])])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FormatError(f"resume state {self.path} is damaged ({exc!r}): delete it to "
                              "restart the restore from the beginning") from None

    def fresh(self) -> RestoreState:
        return RestoreState(fingerprint=self.fingerprint, point_id=self.point_id,
                            targets=list(self.targets))

    def forget_others(self) -> list[Path]:
        """Before a fresh restore writes its targets: remove the resume states of other
        restores in this directory onto any of them. Resuming one of those later would
        skip its wipe, table and finished volumes, whose bytes this restore replaced."""
        gone: list[Path] = []
        for path in sorted(self.path.parent.glob("rescue-*.state.json")):
            if path == self.path:
                continue
            try:
                doc = json.loads(path.read_text())
                theirs = set(doc.get("targets", []))
            except (OSError, ValueError, TypeError, AttributeError):
                continue
            if theirs & set(self.targets):
                path.unlink(missing_ok=True)
                gone.append(path)
        return gone

    def prepare(self) -> None:
        """Before anything is read or written: the directory exists (made if need be) and
        takes files; else a UsageError naming it."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not os.access(directory, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as exc:
            raise UsageError(f"state directory {directory}: {exc.strerror or exc}: choose "
                             "another with --state-dir (or \"state_dir\" in the answers "
                             "file)") from None

    def save(self, state: RestoreState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        durable.replace_file(self.path, json.dumps(asdict(state)).encode())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
