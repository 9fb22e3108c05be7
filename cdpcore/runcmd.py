"""One way to run external tools (lvm, sfdisk, blkid, mkswap, grub-install, ...): the
command is logged, stderr is captured, and a failure raises CommandFailed with the
command, its exit code and the tail of its stderr."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from .errors import CommandFailed

log = logging.getLogger("cdp.cmd")


def untranslated() -> dict[str, str]:
    """The environment for a tool some of whose messages are told apart by their text
    (sfdisk, fsfreeze): the C locale."""
    return {**os.environ, "LC_ALL": "C"}


def run(argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
        env: Mapping[str, str] | None = None, timeout: float | None = 600,
        stdout: IO[bytes] | None = None) -> subprocess.CompletedProcess[bytes]:
    """`stdout`: a file for the output instead of memory (the result's stdout is then
    None)."""
    args = [str(a) for a in argv]
    log.debug("run: %s", " ".join(args))
    try:
        proc = subprocess.run(args, input=input, stdout=stdout or subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, timeout=timeout, check=False)
    except FileNotFoundError:
        raise CommandFailed(args, 127, f"{args[0]}: command not found") from None
    except OSError as exc:  # E2BIG (too many arguments), ENOEXEC, EACCES, ...
        raise CommandFailed(args, 126, f"{args[0]}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(args, -1, f"timed out after {timeout} s") from None
    if check and proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def start(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start a helper that runs beside this process (and may outlive it): in a session of
    its own, so that signals for this process group do not reach it, with pipes to its
    stdin and stdout and its stderr discarded."""
    args = [str(a) for a in argv]
    log.debug("start: %s", " ".join(args))
    try:
        return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError:
        raise CommandFailed(args, 127, f"{args[0]}: command not found") from None
    except OSError as exc:
        raise CommandFailed(args, 126, f"{args[0]}: {exc.strerror or exc}") from None


def run_lines(argv: Sequence[str], **kwargs: Any) -> Iterator[str]:
    """Run a tool whose output may be too large to hold in memory (a filesystem's
    free-space map): it goes to an unnamed temporary file and is read back line by line.
    Fails as run() does, before the first line."""
    with tempfile.TemporaryFile() as out:
        run(argv, stdout=out, **kwargs)
        out.seek(0)
        for raw in out:
            yield raw.decode(errors="replace")


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
