"""Admin jobs on a datastore: prune and status here; gc and verify in their own modules.
Used by the admin API and by the CLI alike."""

from __future__ import annotations

from typing import Any

from cdpcore.api import PruneReport

from . import retention
from .datastore import Datastore
from .gc import gc
from .verify import verify

__all__ = ["gc", "prune", "status", "verify"]


def prune(ds: Datastore, host: str | None = None) -> PruneReport:
    """Remove the points retention does not keep. Frees no space by itself: gc does."""
    kept: list[str] = []
    removed: list[str] = []
    hosts = [host] if host else ds.catalog.host_names()
    for name in hosts:
        rows = ds.catalog.point_rows(name)
        # By the server's word only: the creation time is the agent's, and a compromised
        # agent could date decoys into the future to outrank every real point, or just
        # after each real point to make it the newest of its bucket instead.
        keep = retention.select(
            [retention.Candidate(r.point_id, r.committed, r.pinned, r.arrival) for r in rows],
            ds.catalog.retention(name))
        gone = ds.catalog.delete_points(
            name, [r.point_id for r in rows if r.point_id not in keep], keep_pinned=True)
        kept += [r.point_id for r in rows if r.point_id not in gone]
        removed += gone
    return PruneReport(kept=kept, removed=removed)


def status(ds: Datastore) -> dict[str, Any]:
    return dict(ds.catalog.status())
