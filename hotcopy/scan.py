"""Reading a volume from its snapshot: hash every block (or only the blocks change
tracking names), compare with the IDs of the last point, and upload the blocks whose ID
changed. The holes of a sparse image file are not read: their blocks are
ZERO_ID (`os.lseek` SEEK_DATA/SEEK_HOLE). Reading, hashing and sealing run on worker
processes (hotcopy.sealpool), which also upload what they sealed (the caller flushes them
at the end), with a bounded window of segments in flight, so memory stays bounded for any
volume."""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from cdpcore import format as fmt
from cdpcore.index import Geometry

from . import fsmap
from .changes import Run, block_runs, subtract_runs
from .errors import SourceError
from .sealpool import SealPool, Segment, Stored, read_ahead
from .snapshot import ReadView
from .state import IdFile
from .transfer import UploadStats

#: Bytes read and sealed per task.
SEGMENT_BYTES = 16 * 1024 * 1024
#: Above this many changed blocks, the index is rebuilt from the ID file rather than
#: patched, so the change map never grows without bound.
MAX_TRACKED_CHANGES = 1 << 18

#: A sequential scan releases the ID file's pages it is done with every this many blocks.
RELEASE_BLOCKS = 1 << 16
#: A sparse source with more data extents than this is read whole (its holes are read as
#: zeros): the list would cost more memory than the agent's bound, as a free-space map.
MAX_DATA_RANGES = fsmap.MAX_FREE_RUNS

Progress = Callable[[int], None]


@dataclass
class ScanResult:
    changes: dict[int, bytes] | None  # block -> new ID; None: too many, rebuild the index
    changed_blocks: int = 0
    changed_bytes: int = 0
    scanned_bytes: int = 0  # bytes read (holes and free filesystem space are not)
    free_bytes: int = 0  # bytes skipped because the filesystem marks them free


def tasks(runs: Iterable[Run], per_task: int) -> Iterator[tuple[Run, ...]]:
    """Sorted block runs gathered into tasks of at most `per_task` blocks each, a run cut
    where a task is full: scattered changed blocks share one task, a long run fills many."""
    gathered: list[Run] = []
    room = per_task
    for first, count in runs:
        while count:
            take = min(count, room)
            gathered.append((first, take))
            first, count, room = first + take, count - take, room - take
            if not room:
                yield tuple(gathered)
                gathered, room = [], per_task
    if gathered:
        yield tuple(gathered)


def halves(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """Sorted block runs cut in two at the block before which half of their blocks lie."""
    left = sum(count for _, count in runs) // 2
    for i, (first, count) in enumerate(runs):
        if left < count:
            front = [*runs[:i], (first, left)] if left else runs[:i]
            return front, [(first + left, count - left), *runs[i + 1:]]
        left -= count
    return runs, []


def alternate(front: Iterable[tuple[Run, ...]],
              back: Iterable[tuple[Run, ...]]) -> Iterator[tuple[Run, ...]]:
    """One task of each in turn, then the rest of the longer."""
    for pair in itertools.zip_longest(front, back):
        yield from (task for task in pair if task is not None)


def data_ranges(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """(offset, length) of the data of a regular file in [start, end): what is not a
    hole. A file system without hole support reports all of it as data, and so does a
    file of more than MAX_DATA_RANGES extents."""
    out: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                break
            raise SourceError(f"cannot map the holes of the source: {exc.strerror}") from None
        if data >= end:
            break
        if len(out) == MAX_DATA_RANGES:
            return [(start, end - start)]
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        out.append((data, hole - data))
        pos = hole
    return out


def _split(runs: Iterable[Run], data: list[Run]) -> Iterator[tuple[int, int, bool]]:
    """Sorted, disjoint block runs cut at the edges of the `data` runs (sorted, disjoint):
    (first, count, True for data / False for hole)."""
    j = 0
    for first, count in runs:
        pos, end = first, first + count
        while pos < end:
            while j < len(data) and data[j][0] + data[j][1] <= pos:
                j += 1
            if j == len(data) or data[j][0] >= end:
                yield pos, end - pos, False
                break
            if data[j][0] > pos:
                yield pos, data[j][0] - pos, False
                pos = data[j][0]
            stop = min(data[j][0] + data[j][1], end)
            yield pos, stop - pos, True
            pos = stop


def scan_volume(view: ReadView, geometry: Geometry, ids: IdFile, *,
                trusted: bool, pool: SealPool, uploaded: UploadStats,
                only: Iterable[Run] | None = None, skip_free: bool = False,
                fstype: str | None = None, window: int = 8,
                progress: Progress | None = None) -> ScanResult:
    """`trusted`: the ID file holds the last point's IDs (else every non-zero block is a
    candidate and the server's missing answer decides). `uploaded` adds up what the
    workers sent. `only`: sorted, disjoint block runs to read (`changes.block_runs`: a
    change list or dm-era); None reads every block.
    `skip_free`: blocks the volume's filesystem marks free are not read but recorded as
    all-zero (hotcopy.fsmap), so the point is exact in every file and in the filesystem's
    metadata, with zeros in its free space; `fstype` is what the capture's blkid found in
    the volume, which must be the filesystem the map is read from."""
    bs = geometry.block_size
    per_segment = max(1, SEGMENT_BYTES // bs)
    wanted = [(0, geometry.blocks)] if only is None else only
    result = ScanResult(changes={})
    inflight: deque[tuple[tuple[Run, ...], Future[Stored]]] = deque()
    #: A full read's tasks so far: the block past the furthest, and the blocks their
    #: spans covered since the ID file was last released.
    reach, spanned = 0, 0

    def note(index: int, new_id: bytes) -> None:
        """Record a change of the index: relative to the last point's tree when trusted,
        else to the empty tree (old root ZERO_ID), so a mostly-empty volume's first index
        is patched, not rebuilt block by block."""
        if result.changes is not None:
            result.changes[index] = new_id
            if len(result.changes) > MAX_TRACKED_CHANGES:
                result.changes = None

    def drain_one() -> None:
        runs, fut = inflight.popleft()
        stored = fut.result()
        uploaded.add(stored.uploaded)
        blocks = (index for first, count in runs for index in range(first, first + count))
        for index, new_id in zip(blocks, stored.ids, strict=True):
            old = ids.get(index) if trusted else None
            if new_id == old:
                continue
            result.changed_blocks += 1
            result.changed_bytes += geometry.block_length(index)
            ids.put(index, new_id)
            if new_id != (old if trusted else fmt.ZERO_ID):
                note(index, new_id)

    try:
        fd = os.open(view.path, os.O_RDONLY)  # never opened for writing
    except OSError as exc:
        raise SourceError(f"{view.path}: cannot open for reading: {exc.strerror}") from None

    def submit(runs: tuple[Run, ...]) -> None:
        nonlocal reach, spanned
        olds = b"".join(ids.slice(first, count) for first, count in runs) if trusted else b""
        seg = Segment(view.path, view.offset, runs, geometry.size, bs, olds)
        read_ahead(fd, seg)
        inflight.append((runs, pool.submit(seg)))
        if len(inflight) >= window:
            drain_one()
        end = runs[-1][0] + runs[-1][1]
        reach, spanned = max(reach, end), spanned + end - runs[0][0]
        if only is None and spanned >= RELEASE_BLOCKS:
            # Counted by span, not by blocks read: one block read between long stretches
            # of free space still maps a page of its own. Below the furthest task, the
            # other half's too (a task in flight reads its pages back from the file).
            ids.release(reach)
            spanned = 0
        length = sum(min(n * bs, geometry.size - f * bs) for f, n in runs)
        result.scanned_bytes += length
        if progress is not None:
            progress(length)

    def hole(first: int, count: int) -> None:
        """Blocks in a hole are ZERO_ID, unread; only IDs that were not zero change."""
        if not trusted:  # as for read blocks: every block counts as changed
            result.changed_blocks += count
            result.changed_bytes += min(count * bs, geometry.size - first * bs)
        for start in range(first, first + count, RELEASE_BLOCKS):
            for index in ids.nonzero(start, min(RELEASE_BLOCKS, first + count - start)):
                ids.put(index, fmt.ZERO_ID)
                if trusted:
                    result.changed_blocks += 1
                    result.changed_bytes += geometry.block_length(index)
                    note(index, fmt.ZERO_ID)
            if only is None:
                ids.release(start)

    def check_size() -> None:
        """Holes are not read, so a short read cannot reveal a shrunk file there."""
        end = view.offset + geometry.size
        if os.fstat(fd).st_size < end:
            raise SourceError(f"{view.path}: device shrank or vanished while being read "
                              f"(the volume ends at byte {end})")

    try:
        data_runs = [(0, geometry.blocks)]
        sparse = stat.S_ISREG(os.fstat(fd).st_mode)
        if sparse:
            check_size()
            data_runs = block_runs(data_ranges(fd, view.offset, view.offset + geometry.size),
                                   view.offset, geometry.size, bs)
        # A full read skips what the filesystem marks free; a change list reads only
        # written blocks anyway, and a block freed since keeps its last content.
        free = fsmap.free_block_runs(view.path, view.offset, geometry.size, bs, fstype) \
            if skip_free and only is None else None
        if free:
            result.free_bytes = sum(min(n * bs, geometry.size - f * bs) for f, n in free)
            data_runs = subtract_runs(data_runs, free)
        reads: list[Run] = []
        for first, count, is_data in _split(wanted, data_runs):
            if is_data:
                reads.append((first, count))
            else:
                hole(first, count)
                if progress is not None:
                    progress(min(count * bs, geometry.size - first * bs))
        if only is None:
            # The two halves of the volume in turn: what a disk holds is mostly at its
            # start (its free space, read as zeros, costs reading but no sealing), so the
            # workers then read the zeros while others seal, not all of them at the end
            # with idle cores (BENCHMARKS.md, "... the volume's halves in turn").
            front, back = halves(reads)
            order = alternate(tasks(front, per_segment), tasks(back, per_segment))
        else:
            order = tasks(reads, per_segment)
        for runs in order:
            submit(runs)
        while inflight:
            drain_one()
        if sparse:
            check_size()
    finally:
        os.close(fd)
    view.check()
    return result
