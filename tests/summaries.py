"""The sections the QEMU tests add to pytest's terminal summary, also under -q (their own
prints are captured when they pass). The hook that prints them is in tests/conftest.py:
under pytest-xdist the controlling process collects nothing, so it never loads the
conftest files below tests/."""

from __future__ import annotations

import json

import pytest

#: The property test_boot records: (boot name, seconds to the ready line, seconds to the
#: TUI). A report's properties reach the summary also from a pytest-xdist worker.
BOOT_TIMES = "boot_times"
BOOT_TARGET_S = 45.0


def _passed_calls(terminalreporter: pytest.TerminalReporter) -> list[pytest.TestReport]:
    return [r for r in terminalreporter.stats.get("passed", []) if r.when == "call"]


def boot_times(terminalreporter: pytest.TerminalReporter) -> None:
    """The boot times of this run (issue #7's target: < 45 s to the TUI)."""
    times = sorted(value for report in _passed_calls(terminalreporter)
                   for key, value in report.user_properties if key == BOOT_TIMES)
    if not times:
        return
    terminalreporter.section("rescue image boot times (QEMU software emulation)")
    for name, ready, tui in times:
        verdict = "met" if tui < BOOT_TARGET_S else "MISSED"
        terminalreporter.write_line(f"{name}: ready line {ready:.1f} s, TUI {tui:.1f} s "
                                    f"(target < {BOOT_TARGET_S:.0f} s: {verdict})")


def drill(terminalreporter: pytest.TerminalReporter) -> None:
    """The drill's phases and durations, when this run passed it."""
    from tests.drill.test_drill import _summary_path

    path = _summary_path()
    # the drill writes its summary when it passes: only then is the file this run's
    if not path.exists() or not any("test_disaster_drill" in r.nodeid
                                    for r in _passed_calls(terminalreporter)):
        return
    doc = json.loads(path.read_text())
    terminalreporter.section("disaster drill")
    for entry in doc.get("phases", []):
        facts = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("phase", "seconds"))
        terminalreporter.write_line(f"{entry['phase']}: {entry['seconds']} s"
                                    + (f" ({facts})" if facts else ""))
    terminalreporter.write_line(f"total {doc.get('total_seconds')} s; summary: {path}")
