"""Server-side errors, all in the cdpcore.errors hierarchy. Each carries the HTTP status
the API layer answers with; the message becomes the answer's `detail`."""

from __future__ import annotations

from typing import Any

from cdpcore.errors import ServerError


class Conflict(ServerError):
    """The request contradicts what is stored (another key, another point with this ID)."""

    def __init__(self, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(message, 409)
        self.body = body


class CatalogDamaged(ServerError):
    """The catalog database failed its own consistency check."""

    exit_code = 12

    def __init__(self, message: str) -> None:
        super().__init__(message, 500)


class DatastoreBusy(ServerError):
    """Another `cdp-server serve` serves this datastore."""

    exit_code = 13

    def __init__(self, message: str) -> None:
        super().__init__(message, None)


class StorageFull(ServerError):
    """The datastore's disk is full: nothing was stored."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 507)


class BadRequest(ServerError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status)
