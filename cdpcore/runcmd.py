"""One way to run external tools (lvm, sfdisk, blkid, mkswap, grub-install, ...): the
command is logged, stderr is captured, and a failure raises CommandFailed with the
command, its exit code and the tail of its stderr."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import CommandFailed

log = logging.getLogger("cdp.cmd")


def run(argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
        env: Mapping[str, str] | None = None, timeout: float | None = 600,
        ) -> subprocess.CompletedProcess[bytes]:
    args = [str(a) for a in argv]
    log.debug("run: %s", " ".join(args))
    try:
        proc = subprocess.run(args, input=input, capture_output=True, env=env,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise CommandFailed(args, 127, f"{args[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(args, -1, f"timed out after {timeout} s") from None
    if check and proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def start(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start a helper that runs beside this process (and may outlive it): in a session of
    its own, so that signals for this process group do not reach it, with a pipe to its
    stdin and its output discarded."""
    args = [str(a) for a in argv]
    log.debug("start: %s", " ".join(args))
    try:
        return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError:
        raise CommandFailed(args, 127, f"{args[0]}: command not found") from None


def run_text(argv: Sequence[str], **kwargs: Any) -> str:
    return run(argv, **kwargs).stdout.decode(errors="replace")


def run_json(argv: Sequence[str], **kwargs: Any) -> Any:
    """Run a tool that prints JSON (lsblk -J, sfdisk --json, lvm --reportformat json)."""
    return parse_json(argv, run_text(argv, **kwargs))


def parse_json(argv: Sequence[str], out: str) -> Any:
    """The JSON a tool printed; CommandFailed naming the tool when it is not JSON."""
    try:
        return json.loads(out)
    except ValueError as exc:
        raise CommandFailed([str(a) for a in argv], 0, f"output is not JSON: {exc}") from None
