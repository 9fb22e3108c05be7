"""Programs the tests interrupt with SIGINT, started as a terminal's shell starts them:
with Ctrl-C at its default and not blocked, whatever the test process has. A command
started in the background by a shell without job control (`nohup make test &`) inherits
SIGINT ignored, and so would every program it starts."""

from __future__ import annotations

import signal
from pathlib import Path


def interruptible() -> None:
    """A `preexec_fn`: SIGINT at its default and unblocked in the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def signal_state(pid: int) -> str:
    """What each thread of `pid` blocks, ignores, catches and has pending (from
    /proc/PID/task/TID/status): for a message about a signal that was not acted on."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda t: int(t.name)):
        try:
            status = (task / "status").read_text().splitlines()
        except OSError:
            continue  # the thread ended meanwhile
        lines.append(f"thread {task.name}: " + " ".join(
            line.replace("\t", "") for line in status if line.startswith(
                ("Name", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"))))
    return "\n".join(lines)
