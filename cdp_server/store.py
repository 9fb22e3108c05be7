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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from cdpcore.directio import ALIGN, BufferPool, DirectFile
from cdpcore.durable import fsync_dir
from cdpcore.errors import IntegrityError, NotFoundError

from .errors import StorageFull


class ObjectStore(Protocol):
    def put(self, name: str, parts: Sequence[bytes | memoryview]) -> None:
        """Store the concatenation of `parts` durably under `name`; visible only once
        complete."""

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


#: Direct I/O buffers of the request threads (cdpcore.directio): packs are written and read
#: in pieces of this size, without the page cache (a pack is fsynced at once, and its
#: blobs are read back rarely and checked on every read).
_BUFFERS = BufferPool(4 * 1024 * 1024)
#: Ranges of a pack read in one transfer when the gap between them is at most this.
_MAX_GAP = 64 * 1024


def catalog_reserve(fs_bytes: int) -> int:
    """Free space uploads leave on the datastore's filesystem: 1 % of it, at least 1 MiB,
    at most 256 MiB. The catalog writes into it, so that on a full datastore prune and
    gc (which free space), verify and commits of already uploaded objects still work."""
    return min(256 << 20, max(1 << 20, fs_bytes // 100))


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

    def put(self, name: str, parts: Sequence[bytes | memoryview]) -> None:
        path = self._path(name)
        size = sum(len(p) for p in parts)
        fs = os.statvfs(self.root)
        free, reserve = fs.f_bavail * fs.f_frsize, catalog_reserve(fs.f_blocks * fs.f_frsize)
        if free - size < reserve:
            raise StorageFull(f"the datastore is full: {free >> 20} MiB free, {reserve >> 20} "
                              f"MiB of it kept for the catalog; prune and gc free space")
        tmp = self.tmp / f"{uuid.uuid4().hex}.tmp"
        try:
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                # The new directory's own entry must be durable too, or a power loss can
                # take the directory and every pack in it.
                for parent in path.relative_to(self.root).parents:
                    fsync_dir(self.root / parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with _BUFFERS.take() as buf:
                    bulk = DirectFile(str(tmp), fd, os.O_WRONLY, buf)
                    try:
                        bulk.write(0, parts)
                    finally:
                        bulk.close()
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"the datastore is full: cannot write {size} bytes") from None
            raise

    def get_ranges(self, name: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFoundError(f"object {name} is missing from the store") from None
        except OSError as exc:
            raise _unreadable(name, exc) from None
        try:
            with _BUFFERS.take() as buf:
                bulk = DirectFile(str(path), fd, os.O_RDONLY, buf)
                try:
                    return _read_ranges(bulk, ranges)
                finally:
                    bulk.close()
        except OSError as exc:
            raise _unreadable(name, exc) from None
        finally:
            os.close(fd)

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            return  # never written (a crash before its put) or already deleted
        fsync_dir(path.parent)

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


#: Read errors that mean the stored bytes are lost (the disk's, or the filesystem's
#: checksums: XFS reports EBADMSG and EUCLEAN), not that the server is short of something.
_MEDIA_ERRORS = frozenset({errno.EIO, errno.EISDIR, errno.EBADMSG, errno.EUCLEAN})


def _unreadable(name: str, exc: OSError) -> OSError | IntegrityError:
    """A media error reading a pack is damage of its objects (IntegrityError: verify and
    fetch mark them, a backup heals them); any other error stays what it is."""
    if exc.errno not in _MEDIA_ERRORS:
        return exc
    return IntegrityError(f"object {name} cannot be read: {exc.strerror or exc}")


def _read_ranges(bulk: DirectFile, ranges: list[tuple[int, int]]) -> list[bytes]:
    """Neighbouring ranges (in offset order, as a fetch asks) are read in one transfer."""
    out: list[bytes] = []
    limit = bulk.buffer.size - 2 * ALIGN
    i = 0
    while i < len(ranges):
        start, end, j = ranges[i][0], ranges[i][0] + ranges[i][1], i + 1
        while j < len(ranges) and 0 <= ranges[j][0] - end <= _MAX_GAP \
                and ranges[j][0] + ranges[j][1] - start <= limit:
            end = ranges[j][0] + ranges[j][1]
            j += 1
        if end - start > limit:  # one range larger than the buffer
            out.append(os.pread(bulk.fd, ranges[i][1], start))
            i += 1
            continue
        span = bulk.read(start, end - start)
        out.extend(bytes(span[offset - start:offset - start + length])
                   for offset, length in ranges[i:j])
        i = j
    return out

