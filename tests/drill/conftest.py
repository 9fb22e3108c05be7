"""One protected-disk build per session (cached across sessions under the image cache):
the rescue image may be rebuilt while the drill runs, and every test here must use the
disk built from the same image."""

from __future__ import annotations

import json

import pytest

from .protected import ProtectedDisk, ensure_protected_disk


@pytest.fixture(scope="session")
def protected_disk() -> ProtectedDisk:
    return ensure_protected_disk()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The drill's phases and durations at the end of every run that ran it, also under
    -q (its own prints are captured when it passes)."""
    from .test_drill import _summary_path

    path = _summary_path()
    # the drill writes its summary when it passes: only then is the file this run's
    passed = [r for r in terminalreporter.stats.get("passed", [])
              if r.when == "call" and "test_disaster_drill" in r.nodeid]
    if not passed or not path.exists():
        return
    doc = json.loads(path.read_text())
    terminalreporter.section("disaster drill")
    for entry in doc.get("phases", []):
        facts = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("phase", "seconds"))
        terminalreporter.write_line(f"{entry['phase']}: {entry['seconds']} s"
                                    + (f" ({facts})" if facts else ""))
    terminalreporter.write_line(f"total {doc.get('total_seconds')} s; summary: {path}")
