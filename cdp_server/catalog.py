"""The catalog interface: hosts, tokens, which pack holds which object, and the
recovery points. cdp_server.sqlite_catalog implements it; a PostgreSQL catalog would
implement the same methods, and nothing above the datastore would change.

Contract every implementation keeps: each method that writes is one transaction (all of
it is visible, or none of it); a point and the "complete" marks its commit checked
appear together; reads see only committed state."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cdpcore.api import ObjectKind, Retention, Role


@dataclass(frozen=True)
class Location:
    pack: str
    offset: int
    length: int
    #: from the object's upload record: CRC-32 (4 bytes) or SHA-256 (32), cdpcore.records
    checksum: bytes
    damaged: bool
    complete: bool


@dataclass(frozen=True)
class PointRow:
    host: str
    point_id: str
    created: float
    committed: float
    parent: str | None
    size: int
    stats: str  # JSON of PointStats
    pinned: bool
    verify: str
    volumes: str  # JSON list of VolumeWire
    manifest: str
    digest: str  # hash of the commit request: tells a retry from a conflict
    #: 1, 2, ... in the order the host's points were committed (0: not from the catalog)
    arrival: int = 0

    def head(self) -> str:
        return point_head(self.host, self.point_id, self.created, self.committed,
                          self.parent, self.size, self.stats)


def point_head(host: str, point_id: str, created: float, committed: float,
               parent: str | None, size: int, stats: str) -> str:
    """PointInfo's JSON without its closing brace and its mutable fields."""
    return json.dumps({"point_id": point_id, "host": host, "created": created,
                       "committed": committed, "parent": parent, "size": size,
                       "stats": json.loads(stats)}, separators=(",", ":"))[:-1]


@dataclass(frozen=True)
class PackRow:
    name: str
    # 'pending' (being written, or abandoned by a crash), 'done', or 'retired' (no object
    # left in it: its file is deleted, then its row)
    state: str
    created: float
    size: int


class Catalog(Protocol):
    # hosts and tokens
    def add_token(self, token_hash: str, role: Role, host: str | None) -> None: ...
    def create_host(self, name: str, token_hashes: dict[Role, str]) -> None: ...
    def token(self, token_hash: str) -> tuple[Role, str | None] | None: ...
    def replace_tokens(self, host: str | None, role: Role, token_hash: str) -> int:
        """Make `token_hash` the only token of `role` for `host` (None: admin tokens), in
        one transaction; returns how many tokens it revoked. NotFoundError for a removed
        host (one without tokens)."""
    def host_exists(self, name: str) -> bool: ...
    def retire_host(self, name: str) -> int:
        """Revoke every token of host `name` and delete its points, key and retention rules
        in one transaction (the row stays: its objects are the host's until gc frees
        them); returns how many points it deleted."""
    def host_retired(self, name: str) -> bool:
        """A host with no token left: removed."""
    def host_names(self) -> list[str]: ...
    def integrity_problems(self) -> list[str]:
        """What the catalog's own consistency check finds; empty when it is sound."""
    def host_summary(self, name: str) -> tuple[int, float | None, bool]: ...
    def get_key(self, host: str) -> str | None: ...
    def put_key(self, host: str, key: str) -> bool: ...
    def retention(self, host: str) -> Retention: ...
    def set_retention(self, host: str, retention: Retention) -> None: ...

    # objects
    def locate(self, host: str, kind: ObjectKind, ids: Iterable[bytes],
               ) -> dict[bytes, Location]: ...
    def present(self, host: str, kind: ObjectKind, ids: Iterable[bytes]) -> set[bytes]:
        """Which of `ids` are stored and not damaged (cheaper than locate)."""
    def touch(self, host: str, kind: ObjectKind, ids: list[bytes], now: float) -> int:
        """Refresh "last seen" of these objects; returns how many rows it refreshed."""
    def begin_pack(self, name: str, size: int) -> None: ...
    def add_objects(self, host: str, kind: ObjectKind, pack: str,
                    rows: list[tuple[bytes, int, int, bytes]], now: float,
                    touched: Sequence[bytes] = ...) -> tuple[int, list[bytes]]:
        """Make a written pack's objects visible, refreshing `touched` (found present) in
        the same transaction; returns how many became visible and which of `touched`
        were gone (gc deleted them after the caller's lookup)."""
    def mark_damaged(self, host: str, kind: ObjectKind, ids: list[bytes], *,
                     found: Mapping[bytes, Location] | None = None) -> None:
        """Mark these objects damaged; with `found` (where each was read corrupted) only
        the rows that still point there: a copy uploaded or moved since may be intact."""
    def clear_damaged(self, host: str, kind: ObjectKind,
                      found: Mapping[bytes, Location]) -> None:
        """Clear the damage mark of these objects where each row still points at the
        location given, which was just read intact (`found`: id -> that location)."""
    def damaged(self, host: str) -> list[bytes]: ...

    # points
    def point(self, host: str, point_id: str) -> PointRow | None: ...
    def damage_marks(self, host: str) -> frozenset[tuple[int, bytes]]: ...
    def insert_point(self, row: PointRow, complete_pages: list[bytes],
                     damage_before: frozenset[tuple[int, bytes]] = frozenset()) -> None: ...
    def points_json(self, host: str, limit: int | None, before: float | None,
                    after: float | None) -> bytes: ...
    def point_rows(self, host: str | None = None) -> list[PointRow]: ...
    def set_pinned(self, host: str, point_id: str, pinned: bool) -> bool: ...
    def delete_points(self, host: str, point_ids: list[str], *,
                      keep_pinned: bool = False) -> list[str]: ...
    def damaged_records(self, host: str) -> set[str]: ...
    def set_verify(self, statuses: list[tuple[str, str, str]]) -> None: ...

    # garbage collection and recovery
    def object_ages(self, host: str, kind: ObjectKind) -> list[tuple[bytes, float]]: ...
    def delete_unseen(self, host: str, kind: ObjectKind, ids: list[bytes],
                      cutoff: float) -> int: ...
    def keep_complete_only(self, host: str, live_pages: set[bytes]) -> None: ...
    def packs(self) -> list[PackRow]: ...
    def pack_usage(self) -> dict[str, tuple[int, int]]: ...
    def retire_pack(self, name: str) -> bool: ...
    def forget_retired(self, name: str) -> None: ...
    def pack_objects(self, name: str) -> list[tuple[str, ObjectKind, bytes, Location]]: ...
    def move_objects(self, old: str, new: str,
                     moves: list[tuple[str, ObjectKind, bytes, int, int]]) -> None: ...
    def forget_pending(self, names: list[str]) -> list[str]: ...
    def status(self) -> dict[str, int]: ...
