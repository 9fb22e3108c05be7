"""Resume state of a restore: which actions finished and, per streamed volume, how many
leading blocks are written, verified and synced to the target. Keyed by the plan's
fingerprint (point + targets + actions), so a state is never applied to another restore.

Written atomically (temporary file, fsync, rename): a power loss leaves the old state or
the new one, never a torn file. Kept next to an image-file target, or on the rescue
system's RAM disk (/run) for block devices.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cdpcore import durable
from cdpcore.errors import FormatError, UsageError

from .plan import Plan

RAM_STATE_DIR = "/run/cdp-rescue"


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
        return RestoreState(fingerprint=doc["fingerprint"], point_id=doc["point_id"],
                            done_actions=list(doc["done_actions"]),
                            volume_blocks={k: int(v) for k, v in doc["volume_blocks"].items()},
                            targets=list(self.targets))

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
