"""The freeze guard (hotcopy.snapshot.freeze): `python -m hotcopy.thawguard AGENT_PID
MAX_SECONDS MOUNTPOINT...` thaws the mountpoints as soon as the agent exits, unless the
agent first writes `thawed` on the guard's stdin; and, with MAX_SECONDS above 0, once
they have been frozen that long, saying `expired` on its stdout first, so the agent
knows its read was not point-in-time. It ignores the signals that stop the agent, so a
killed agent never leaves a filesystem frozen."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

from cdpcore import runcmd

EXPIRED = b"expired"


def guard(agent: int, max_seconds: float, targets: list[str]) -> None:
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    deadline = time.monotonic() + max_seconds if max_seconds > 0 else None
    try:
        # A pidfd, not the pipe alone: the agent's forked workers hold the pipe too.
        pidfd: int | None = os.pidfd_open(agent)
    except ProcessLookupError:
        pidfd = None  # the agent is already gone
    stdin = sys.stdin.buffer
    while pidfd is not None:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([stdin, pidfd], [], [], left)
        if stdin in ready:
            if stdin.readline().strip() == b"thawed":
                return
            break  # end of file: the agent's end of the pipe is closed
        if pidfd in ready:
            break
        if not ready:  # frozen too long: the agent must not take its read for consistent
            with contextlib.suppress(OSError):  # nothing may keep the guard from thawing
                sys.stdout.buffer.write(EXPIRED + b"\n")
                sys.stdout.buffer.flush()
            break
    for target in targets:
        runcmd.run(["fsfreeze", "--unfreeze", target], check=False)


if __name__ == "__main__":
    guard(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:])
