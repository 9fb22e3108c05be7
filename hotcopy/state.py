"""The agent's local state: per volume, the chunk ID of every block as of the last
committed point (a flat file of 32-byte IDs, memory-mapped so memory stays bounded for any
volume size), plus a small JSON document naming that point. A scan compares each block's
new ID with the old one: keyed BLAKE3 IDs are as cheap as a fingerprint would be.

Protocol (crash-safe): before a run patches any ID file, the document is rewritten with
`point_id = null` (dirty); only after the server accepted the commit is it rewritten with
the new point. A crash, a failed commit or a full disk in between leaves a dirty state,
which the next run detects and answers with a full scan. Each rewrite is fsynced, and so is
the directory after the rename: a rename lost to a power cut could otherwise bring back a
document that trusts ID files patched since.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cdpcore import durable
from cdpcore import format as fmt
from cdpcore.crypto import is_zero

from .errors import StateBusy, StateError

log = logging.getLogger("cdp.agent.state")
#: Version 3: ID files are named by the volume's name percent-encoded (version 2 replaced
#: every other character with "_", so "a+b.img:whole" and "a_b.img:whole" shared a file).
#: Version 2: IDs are keyed BLAKE3 (format version 2). An older state is discarded: the
#: next point is a full scan, and its start removes the old ID files.
_STATE_VERSION = 3
#: Longest encoded volume name in an ID file's name (file names end at 255 bytes).
_FILE_NAME_MAX = 200


@dataclass
class VolumeState:
    size: int
    block_size: int
    root: str  # hex root page ID of the last point
    #: where the volume starts on its source: a partition recreated elsewhere with the
    #: same number and size is another volume, whose unwritten blocks hold other data
    offset: int = 0


@dataclass
class HostState:
    point_id: str | None = None  # None: dirty or never backed up
    generation: int = 0  # tracking generation: bumped on every full scan
    created: float = 0.0
    points_since_full: int = 0
    volumes: dict[str, VolumeState] = field(default_factory=dict)
    era: dict[str, Any] = field(default_factory=dict)  # per volume: era checkpoint info


def _fs_error(what: str, exc: OSError, committed: str | None = None) -> StateError:
    """`committed`: the point the server accepted before the state naming it could not be
    saved; the state last saved is then the dirty one of before the commit."""
    full = exc.errno == errno.ENOSPC
    reason = (f"local state disk is full while writing {what}: free space in the state "
              "directory" if full else f"cannot write {what}: {exc.strerror}")
    if committed is not None:
        return StateError(f"point {committed} was committed, but the local state was not "
                          f"saved ({reason}): the next point reads every volume in full "
                          "(a full scan)")
    return StateError(f"{reason} (the point was not committed)" if full else reason)


class StateDir:
    """One host's state under `<state_dir>/<host>/`."""

    def __init__(self, root: str | os.PathLike[str], host: str) -> None:
        self.dir = Path(root) / host
        try:
            (self.dir / "ids").mkdir(parents=True, exist_ok=True, mode=0o700)
            # Scan fingerprints of a version 1 state (16 bytes per block, 1 GiB per TiB):
            # unused since, whatever became of the state document.
            for legacy in (self.dir / "ids").glob("*.fp"):
                legacy.unlink(missing_ok=True)
        except OSError as exc:
            raise _fs_error(str(self.dir), exc) from None
        self.doc_path = self.dir / "state.json"

    def load(self) -> HostState:
        try:
            doc = json.loads(self.doc_path.read_text())
            # A document of another shape (damaged, edited by hand) raises below, as one
            # that is not JSON does: it must not fail every run.
            if doc.get("version") != _STATE_VERSION:
                return HostState()
            vols = {name: VolumeState(size=int(v["size"]), block_size=int(v["block_size"]),
                                      root=bytes.fromhex(v["root"]).hex(),
                                      offset=int(v.get("offset", 0)))
                    for name, v in doc.get("volumes", {}).items()}
            return HostState(point_id=doc.get("point_id"),
                             generation=int(doc.get("generation", 0)),
                             created=float(doc.get("created", 0.0)),
                             points_since_full=int(doc.get("points_since_full", 0)),
                             volumes=vols, era=dict(doc.get("era", {})))
        except FileNotFoundError:
            return HostState()
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # Unreadable state is only a lost hint: a full scan rebuilds it.
            log.warning("local state %s is unreadable (%s: %s): the next point is a full "
                        "scan", self.doc_path, type(exc).__name__, exc)
            return HostState()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One point at a time per host and state directory: two runs (the `cdp-agent run`
        service and a manual `cdp-agent backup`) would patch the same ID files, and one
        run's start-up cleanup would thaw the other's frozen filesystems."""
        try:
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _fs_error(str(self.dir / "lock"), exc) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateBusy(f"another cdp-agent run is taking a point of this host "
                                 f"(it holds {self.dir / 'lock'}): wait for it to finish"
                                 ) from None
            yield
        finally:
            os.close(fd)

    def remove_other_ids(self, state: HostState) -> None:
        """Delete the ID files of volumes `state` does not hold: removed volumes, and all
        of an older state's (discarded on loading), before new ones take their space."""
        kept = {self.ids_path(name) for name in state.volumes}
        try:
            for stale in set((self.dir / "ids").glob("*.ids")) - kept:
                stale.unlink(missing_ok=True)
        except OSError as exc:
            raise _fs_error(str(self.dir / "ids"), exc) from None

    def save(self, state: HostState) -> None:
        """A state that names a point records a commit the server has accepted (the
        protocol above): its failure says so."""
        doc = {"version": _STATE_VERSION, **asdict(state)}
        try:
            # Durable, the directory's rename included: the dirty mark must reach the disk
            # before any ID file is patched.
            durable.replace_file(self.doc_path, json.dumps(doc, indent=1).encode())
        except OSError as exc:
            raise _fs_error(str(self.doc_path), exc, committed=state.point_id) from None

    def ids_path(self, volume: str) -> Path:
        """One file per volume name: percent-encoding is one-to-one (no two names share a
        file) and leaves no "/" in the file name. Volume names hold no "~": a name that
        encodes too long for a file name is cut and marked with "~" and its SHA-256."""
        encoded = quote(volume, safe="")
        if len(encoded) > _FILE_NAME_MAX:  # ":", "+" and "/" take three characters each
            digest = hashlib.sha256(volume.encode()).hexdigest()
            encoded = f"{encoded[:_FILE_NAME_MAX - len(digest) - 1]}~{digest}"
        return self.dir / "ids" / f"{encoded}.ids"

    def open_ids(self, volume: str, blocks: int) -> IdFile:
        return IdFile(self.ids_path(volume), blocks)


class IdFile:
    """A memory-mapped array of the chunk IDs of `blocks` blocks. A missing or resized
    file starts as all zero (ZERO_ID), and a size change is reported through `fresh`."""

    record = fmt.ID_SIZE

    def __init__(self, path: Path, blocks: int) -> None:
        self.path = path
        self.blocks = blocks
        size = blocks * self.record
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                self.fresh = os.fstat(fd).st_size != size
                if self.fresh:
                    os.ftruncate(fd, 0)
                    # posix_fallocate reserves the blocks now: a full disk fails here,
                    # not later as SIGBUS inside the mapping.
                    if size:
                        os.posix_fallocate(fd, 0, size)
                self._map = mmap.mmap(fd, size) if size else None
            finally:
                os.close(fd)
        except OSError as exc:
            raise _fs_error(str(path), exc) from None

    def get(self, index: int) -> bytes:
        assert self._map is not None
        return self._map[index * self.record:(index + 1) * self.record]

    def slice(self, first: int, count: int) -> bytes:
        """The IDs of blocks [first, first + count), concatenated."""
        assert self._map is not None
        return self._map[first * self.record:(first + count) * self.record]

    def put(self, index: int, chunk_id: bytes) -> None:
        assert self._map is not None
        self._map[index * self.record:(index + 1) * self.record] = chunk_id

    def iter_ids(self) -> Iterator[bytes]:
        for i in range(self.blocks):
            yield self.get(i)

    def release(self, end_block: int) -> None:
        """Write back and unmap IDs before `end_block`: a sequential pass over a huge
        volume then keeps only a window of its ID file in the process's memory."""
        if self._map is None:
            return
        end = (end_block * self.record) // mmap.PAGESIZE * mmap.PAGESIZE
        if end > 0:
            self._map.flush(0, end)
            self._map.madvise(mmap.MADV_DONTNEED, 0, end)

    def nonzero(self, first: int, count: int) -> list[int]:
        """Indexes in [first, first + count) whose ID is not ZERO_ID. Compares slices of
        the mapping at memcmp speed, so the run of a huge hole costs little."""
        if self._map is None:
            return []
        out = []
        step = 1 << 16
        for start in range(first, first + count, step):
            stop = min(start + step, first + count)
            if not is_zero(memoryview(self._map)[start * self.record:stop * self.record]):
                out += [i for i in range(start, stop) if self.get(i) != fmt.ZERO_ID]
        return out

    def find(self, wanted: set[bytes]) -> list[int]:
        """Block indexes whose ID is in `wanted` (a linear pass over the mapping)."""
        if not wanted or self._map is None:
            return []
        return [i for i in range(self.blocks) if self.get(i) in wanted]

    def close(self) -> None:
        if self._map is not None:
            self._map.flush()
            self._map.close()
            self._map = None

    def __enter__(self) -> IdFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
