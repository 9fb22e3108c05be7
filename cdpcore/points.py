"""Choosing a recovery point from what the user typed: "latest", a point ID or a unique
prefix of one, or a time ("the newest point at or before 2026-11-24 10:05"). Shared by the
rescue CLI, its TUI and the agent, so all three read a point choice the same way."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from .api import PointInfo
from .errors import NotFoundError, UsageError
from .units import human

_HEX = re.compile(r"^[0-9a-f]{1,32}$")
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S",
                 "%Y-%m-%dT%H:%M", "%Y-%m-%d")


class PointLike(Protocol):
    @property
    def point_id(self) -> str: ...

    @property
    def created(self) -> float: ...


P = TypeVar("P", bound=PointLike)


def parse_time(text: str) -> float | None:
    """Unix time of a local date/time as typed ("2026-11-24 10:05"); None if not a time.
    A bare date means the end of that day: "the newest point of 2026-11-24"."""
    for form in _TIME_FORMATS:
        try:
            moment = datetime.strptime(text.strip(), form)
        except ValueError:
            continue
        if form == "%Y-%m-%d":
            moment = moment.replace(hour=23, minute=59, second=59)
        return moment.timestamp() + (0.999999 if form == "%Y-%m-%d" else 0.0)
    return None


def select_point(points: Sequence[P], choice: str, host: str = "") -> P:
    """The point `choice` names among `points`. Raises NotFoundError (no such point, no
    point old enough) or UsageError (an ambiguous prefix, an unreadable choice)."""
    where = f" of host {host!r}" if host else ""
    text = choice.strip()
    if not points:
        raise NotFoundError(f"there are no recovery points{where}")
    ordered = sorted(points, key=lambda p: (p.created, p.point_id))
    if text.lower() == "latest":
        return ordered[-1]
    if _HEX.match(text.lower()) and len(text) >= 4:
        matches = [p for p in ordered if p.point_id.startswith(text.lower())]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"point ID prefix {text!r} is ambiguous: it matches "
                             + ", ".join(p.point_id for p in matches))
        if len(text) == 32 or parse_time(text) is None:
            raise NotFoundError(f"no recovery point{where} has an ID starting with {text!r}")
    moment = parse_time(text)
    if moment is None:
        raise UsageError(f"cannot read point choice {choice!r}: use 'latest', a point ID "
                         "(or a unique prefix of at least 4 digits) or a time such as "
                         "'2026-11-24 10:05'")
    before = [p for p in ordered if p.created <= moment]
    if not before:
        raise NotFoundError(f"no recovery point{where} at or before {text}: the oldest is "
                            f"from {local_time(ordered[0].created)}")
    return before[-1]


def local_time(ts: float) -> str:
    """A Unix time as the CLIs and the TUI show it: local, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def point_line(p: PointInfo) -> str:
    """One point as every CLI lists it: ID, local time, size, verify status, pin."""
    return (f"{p.point_id}  {local_time(p.created)}  {human(p.size):>10}  {p.verify.value}"
            + ("  pinned" if p.pinned else ""))
