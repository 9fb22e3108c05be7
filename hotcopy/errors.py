"""The agent's errors: subclasses of the shared hierarchy (cdpcore.errors) with their own
stable exit codes (20-29 are reserved for the agent)."""

from __future__ import annotations

from cdpcore.errors import CdpError


class SourceError(CdpError):
    """A protected device or image is missing, vanished during a read, or unreadable."""

    exit_code = 20


class SnapshotError(CdpError):
    """A snapshot could not be taken, overflowed (became invalid) or could not be removed."""

    exit_code = 21


class StateError(CdpError):
    """The local state directory is unusable (full disk, permissions, corrupt files)."""

    exit_code = 22


class StateBusy(StateError):
    """Another run holds the host's state directory: it is taking a point."""

    exit_code = 23
