"""Politeness on a busy production server: a low CPU priority and the idle I/O class,
set for the agent process before it forks its workers (both are inherited), so that a
point every minute leaves the applications' CPU and disk time alone. Never raises the
priority: under systemd (Nice=, IOSchedulingClass=) the stricter setting stays."""

from __future__ import annotations

import logging
import os

from cdpcore import runcmd
from cdpcore.errors import UsageError

log = logging.getLogger("cdp.agent.priority")

#: ionice classes by the config's names; "none" leaves the I/O priority as it is.
IO_CLASSES = {"idle": "3", "best-effort": "2", "none": ""}


def check(nice: int, io_class: str) -> None:
    if not 0 <= nice <= 19:
        raise UsageError(f"nice must be 0 (normal) to 19 (lowest), not {nice}")
    if io_class not in IO_CLASSES:
        raise UsageError(f"unknown io_class {io_class!r}: use {', '.join(IO_CLASSES)}")


def lower(nice: int, io_class: str) -> None:
    if os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if io_class == "best-effort" and _io_class_now() == "idle":
        return  # already lower (systemd's IOSchedulingClass=idle): never raised
    if IO_CLASSES[io_class]:
        # best-effort level 7 is that class's lowest; idle has no levels
        level = ["-n", "7"] if io_class == "best-effort" else []
        done = runcmd.run(["ionice", "-c", IO_CLASSES[io_class], *level, "-p",
                           str(os.getpid())], check=False)
        if done.returncode:
            log.warning("cannot set the I/O class %s: %s", io_class,
                        done.stderr.decode(errors="replace").strip())


def _io_class_now() -> str:
    """This process's I/O class as ionice names it ("idle", "best-effort", ...)."""
    done = runcmd.run(["ionice", "-p", str(os.getpid())], check=False)
    return done.stdout.decode(errors="replace").split(":")[0].strip()
