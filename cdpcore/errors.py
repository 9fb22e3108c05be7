"""One error hierarchy for every part of the product.

Each error carries a message a sysadmin can act on and a stable process exit code, so
scripts driving `cdp-agent`, `cdp-server` or `rescue` can tell failures apart.
"""

from __future__ import annotations

import reprlib


class CdpError(Exception):
    """Base class. `exit_code` is stable: scripts may rely on it."""

    exit_code = 1


class UsageError(CdpError):
    """The command line, configuration or answers file is wrong."""

    exit_code = 2


class FormatError(CdpError):
    """Bytes that do not follow docs/FORMAT.md: truncated, wrong magic, unknown version."""

    exit_code = 3


class IntegrityError(CdpError):
    """Data failed authentication or its checksum: tampered, corrupted or swapped."""

    exit_code = 4


class WrongKeyError(CdpError):
    """The passphrase or key does not open this repository's key."""

    exit_code = 5


class ServerError(CdpError):
    """The CDP server refused or failed a request (the message carries its reason)."""

    exit_code = 6

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFoundError(ServerError):
    """Unknown host, point, chunk or page."""

    exit_code = 7

    def __init__(self, message: str, status: int | None = 404) -> None:
        super().__init__(message, status)


class AuthError(ServerError):
    """Missing or bad token (401) or a token without the right role (403)."""

    exit_code = 8


class ConnectionFailed(ServerError):
    """The server could not be reached, or the connection kept dropping."""

    exit_code = 9


class StopRequested(CdpError):
    """A request given up because the program is being stopped (the client's `stop_grace`
    hook said so): not retried, and no fault of the server. Whether the server carried it
    out is unknown, as after a lost answer."""

    exit_code = 14


class CommandFailed(CdpError):
    """An external tool (lvm, sfdisk, blkid, mkfs, ...) failed."""

    exit_code = 10

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        super().__init__(
            f"command failed (exit {returncode}): {' '.join(argv)}"
            + (": " + " | ".join(tail) if tail else "")
        )


class TargetError(CdpError):
    """Writing a restore target, or flushing it to the disk, failed (I/O error, no space)."""

    exit_code = 12


class SafetyError(CdpError):
    """A destructive action was refused: wrong disk, mounted disk, rescue medium, too small."""

    exit_code = 11


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 3, 80, 80, 40
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxtuple = _SHOWN.maxset = 6


def shown(value: object) -> str:
    """`value` for an error message, as repr() shows it but bounded in length and depth:
    a value read from outside (a key file, a volume record) may be megabytes long or
    nested too deeply for repr() itself (RecursionError)."""
    return _SHOWN.repr(value)
