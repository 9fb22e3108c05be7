"""The agent's politeness settings: validated, and applied to the process itself (in a
child process here: a niceness once raised cannot be lowered again without privileges
the test should not rely on)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cdpcore.errors import UsageError
from hotcopy import priority


@pytest.mark.parametrize(("nice", "io_class", "message"), [
    (20, "idle", "nice must be 0"), (-1, "idle", "nice must be 0"),
    (10, "realtime", "unknown io_class 'realtime'"),
])
def test_bad_settings_are_refused(nice: int, io_class: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        priority.check(nice, io_class)


def test_lower_sets_nice_and_the_idle_io_class_and_never_raises_priority() -> None:
    code = ("import os, subprocess; from hotcopy import priority; os.nice(15); "
            "priority.lower(10, 'idle'); print(os.getpriority(os.PRIO_PROCESS, 0)); "
            "print(subprocess.run(['ionice', '-p', str(os.getpid())], capture_output=True, "
            "text=True).stdout.strip())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "15"  # already lower than asked: left as it was
    assert out[1] == "idle"


def test_best_effort_does_not_lift_an_idle_class_set_by_systemd() -> None:
    """The unit's IOSchedulingClass=idle with `io_class = "best-effort"` in the config: the
    agent moved itself up to best-effort."""
    code = ("import os, subprocess; from hotcopy import priority; "
            "priority.lower(10, 'best-effort'); "
            "print(subprocess.run(['ionice', '-p', str(os.getpid())], capture_output=True, "
            "text=True).stdout.strip())")
    out = subprocess.run(["ionice", "-c", "3", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "idle"
    out = subprocess.run(["ionice", "-c", "2", "-n", "0", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "best-effort: prio 7"  # a higher class is still lowered
