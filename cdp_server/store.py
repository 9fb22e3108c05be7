"""The object store: immutable named objects (pack files), nothing else.

Designed for object-store semantics so an S3 store can replace the local one: `put`
makes a whole object visible at once (no rename in the interface, no partial objects),
objects are never modified, listing may be slow and is used only to find orphans, and no
access times are relied on. Which object holds which chunk is the catalog's business.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from cdpcore.errors import NotFoundError

from .errors import StorageFull


class ObjectStore(Protocol):
    def put(self, name: str, data: bytes) -> None:
        """Store `data` durably under `name`; visible only once complete."""

    def get_ranges(self, name: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Read each (offset, length) range of one object (a range comes back short if
        the object is shorter): many blobs of a pack for one open or request."""

    def delete(self, name: str) -> None:
        """Remove an object; no error if it is already gone."""

    def list(self) -> Iterator[str]:
        """Every object name (slow on real object stores: for orphan cleanup only)."""


def new_pack_name() -> str:
    """Pack names carry no host name: host names may contain characters paths dislike."""
    hexid = uuid.uuid4().hex
    return f"packs/{hexid[:2]}/{hexid}.pack"


class LocalStore:
    """Objects as files under `root`: temp file, fsync, rename, directory fsync."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad object name {name!r}")
        return self.root / name

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        tmp = self.tmp / f"{uuid.uuid4().hex}.tmp"
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                # The new directory's own entry must be durable too, or a power loss can
                # take the directory and every pack in it.
                for parent in path.relative_to(self.root).parents:
                    _fsync_dir(self.root / parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"the datastore is full: cannot write {len(data)} bytes") \
                    from None
            raise

    def get_ranges(self, name: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError:
            raise NotFoundError(f"object {name} is missing from the store", 404) from None
        try:
            return [os.pread(fd, length, offset) for offset, length in ranges]
        finally:
            os.close(fd)

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return  # never written (a crash before its put) or already deleted
        _fsync_dir(path.parent)

    def list(self) -> Iterator[str]:
        packs = self.root / "packs"
        if packs.is_dir():
            for path in packs.rglob("*.pack"):
                yield path.relative_to(self.root).as_posix()

    def clean_tmp(self) -> int:
        """Remove temp files a crash left behind (call only when no upload is running)."""
        count = 0
        for path in self.tmp.glob("*.tmp"):
            path.unlink(missing_ok=True)
            count += 1
        return count


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
