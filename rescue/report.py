"""The restore report: what was written where, how fast, and what failed. Written as JSON
next to the resume state at the end of every execution, successful or not."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cdpcore import durable


@dataclass
class VolumeReport:
    volume: str
    target: str
    offset: int
    size: int
    written: int = 0
    zeroed: int = 0
    resumed: int = 0
    seconds: float = 0.0
    verified: str = "blocks"  # blocks (per-block checks), read-back, failed
    error: str | None = None


@dataclass
class RestoreReport:
    host: str
    point_id: str
    started: float
    finished: float = 0.0
    dry_run: bool = False
    ok: bool = False
    actions: list[dict[str, Any]] = field(default_factory=list)  # id, status, device
    volumes: list[VolumeReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Where save() wrote it (not in the JSON): `rescue auto` names it before its
    #: CDP-RESTORE-DONE line, as /run is lost at the reboot the answers may ask for.
    saved_to: str | None = field(default=None, compare=False)

    @property
    def bytes_restored(self) -> int:
        return sum(v.written + v.zeroed for v in self.volumes)

    def to_json(self) -> dict[str, Any]:
        doc = {**asdict(self), "bytes_restored": self.bytes_restored}
        del doc["saved_to"]
        return doc

    def save(self, directory: str | os.PathLike[str], stem: str) -> Path:
        path = Path(directory) / f"{stem}.report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        durable.replace_file(path, json.dumps(self.to_json(), indent=2).encode(), mode=0o644)
        self.saved_to = str(path)
        return path
