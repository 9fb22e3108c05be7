"""A progress line drawn with ASCII only (serial consoles): bar, bytes, rate and ETA."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from textual.widgets import Static

from cdpcore.units import human


@dataclass
class Rate:
    """Bytes done over time since the first update: rate and time left."""

    began: float = field(default_factory=time.monotonic)
    base: int = 0  # bytes already done when counting started (a resumed volume)

    def rate(self, done: int, now: float | None = None) -> float:
        elapsed = (time.monotonic() if now is None else now) - self.began
        return (done - self.base) / elapsed if elapsed > 0 else 0.0

    def eta(self, done: int, total: int, now: float | None = None) -> float | None:
        rate = self.rate(done, now)
        return (total - done) / rate if rate > 0 else None


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02}:{s % 60:02}" if s >= 3600 else f"{s // 60:02}:{s % 60:02}"


def bar_text(label: str, done: int, total: int, rate: float, eta: float | None,
             status: str = "", width: int = 10) -> str:
    """One line of at most 78 columns: label, bar, percent, bytes, rate, ETA (or status)."""
    frac = min(done / total, 1.0) if total else 1.0
    filled = int(width * frac)
    return (f"{label[:12]:12} [{'#' * filled}{'.' * (width - filled)}] {frac * 100:5.1f}% "
            f"{human(done)}/{human(total)} {human(int(rate))}/s "
            + (status or f"ETA {eta_text(eta)}"))


class ProgressLine(Static):
    """One volume's (or the whole restore's) progress."""

    def __init__(self, label: str, total: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.label, self.total, self.done = label, total, 0
        self.rate = Rate()
        self.status = ""
        self.fresh = False

    def on_mount(self) -> None:
        self.refresh_text()

    def begin(self) -> None:
        """The action starts now; the rate counts from its first progress report (a resumed
        volume starts part-way)."""
        self.fresh, self.status = True, ""
        self.refresh_text()

    def set_done(self, done: int) -> None:
        if self.fresh:
            self.rate, self.fresh = Rate(base=done), False
        self.done = min(done, self.total)
        self.refresh_text()

    def set_status(self, status: str) -> None:
        self.status = status
        self.refresh_text()

    def refresh_text(self) -> None:
        self.update(bar_text(self.label, self.done, self.total, self.rate.rate(self.done),
                             self.rate.eta(self.done, self.total), self.status))
