"""The freeze guard (hotcopy.snapshot.freeze): `python -m hotcopy.thawguard AGENT_PID
MOUNTPOINT...` thaws the mountpoints as soon as the agent exits, unless the agent first
writes `thawed` on the guard's stdin. It ignores the signals that stop the agent, so a
killed agent never leaves a filesystem frozen."""

from __future__ import annotations

import os
import select
import signal
import sys

from cdpcore import runcmd


def guard(agent: int, targets: list[str]) -> None:
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        # A pidfd, not the pipe alone: the agent's forked workers hold the pipe too.
        pidfd: int | None = os.pidfd_open(agent)
    except ProcessLookupError:
        pidfd = None  # the agent is already gone
    stdin = sys.stdin.buffer
    while pidfd is not None:
        ready, _, _ = select.select([stdin, pidfd], [], [])
        if stdin in ready:
            if stdin.readline().strip() == b"thawed":
                return
            break  # end of file: the agent's end of the pipe is closed
        if pidfd in ready:
            break
    for target in targets:
        runcmd.run(["fsfreeze", "--unfreeze", target], check=False)


if __name__ == "__main__":
    guard(int(sys.argv[1]), sys.argv[2:])
