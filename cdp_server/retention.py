"""Which points retention keeps: a pure function (restic/PBS-style rules, UTC buckets).

keep_last N keeps the N newest points; keep_hourly N keeps the newest point of each of the
N newest hours that have points, and so on per period. A point kept by any rule, or
pinned, stays. Rules all zero keep everything: a host without rules is never pruned.
Points are placed in periods by the time the server committed them, never by the agent's
creation time (prune in cdp_server.jobs), and ranked by the order they were committed in:
by the server's clock alone, a point committed while it ran ahead would stay the newest
after the clock was put right (with keep_last 1 the only point kept, every later one
pruned), and points committed while it ran behind would count as the oldest."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime

from cdpcore.api import Retention


@dataclass(frozen=True)
class Candidate:
    point_id: str
    committed: float  # Unix time, by the server's clock
    pinned: bool
    arrival: int = 0  # commit order (PointRow.arrival); equal ones rank by `committed`


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


_PERIODS: list[tuple[str, Callable[[float], Hashable]]] = [
    ("keep_minutely", lambda t: int(t // 60)),
    ("keep_hourly", lambda t: int(t // 3600)),
    ("keep_daily", lambda t: _utc(t).date()),
    ("keep_weekly", lambda t: _utc(t).isocalendar()[:2]),
    ("keep_monthly", lambda t: (_utc(t).year, _utc(t).month)),
]


def select(points: list[Candidate], rules: Retention) -> set[str]:
    """IDs of the points to keep."""
    if not any(rules.model_dump().values()):
        return {p.point_id for p in points}
    newest_first = sorted(points, key=lambda p: (p.arrival, p.committed, p.point_id),
                          reverse=True)
    keep = {p.point_id for p in newest_first if p.pinned}
    keep.update(p.point_id for p in newest_first[:rules.keep_last])
    for rule, bucket in _PERIODS:
        wanted: int = getattr(rules, rule)
        seen: set[Hashable] = set()
        for p in newest_first:
            if len(seen) >= wanted:
                break
            b = bucket(p.committed)
            if b not in seen:
                seen.add(b)
                keep.add(p.point_id)
    return keep
