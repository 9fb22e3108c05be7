"""Change lists: which blocks of a volume to read again. Whatever knows the writes since
the last point (dm-era, or a caller that made them itself) gives byte ranges of a source;
they become sorted, merged runs of volume blocks, the one input of a partial scan
(`scan_volume(only=...)`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from cdpcore.errors import UsageError

#: (first block, block count)
Run = tuple[int, int]


def check_ranges(changed: Mapping[str, Iterable[tuple[int, int]]],
                 sources: list[str]) -> dict[str, list[tuple[int, int]]]:
    """The caller's change list, keyed by the resolved source path; every range must be
    (offset >= 0, length >= 0) and every path one of `sources`."""
    known = {source_key(s): s for s in sources}
    out: dict[str, list[tuple[int, int]]] = {}
    for path, ranges in changed.items():
        key = source_key(path)
        if key not in known:
            raise UsageError(f"change list names {path}, which is not a source of this "
                             f"point (sources: {', '.join(sources)})")
        checked = out.setdefault(key, [])
        for item in ranges:
            offset, length = item
            if offset < 0 or length < 0:
                raise UsageError(f"change list of {path}: range ({offset}, {length}) has a "
                                 "negative offset or length")
            checked.append((int(offset), int(length)))
    return out


def source_key(path: str) -> str:
    """How a source path is matched against the change list's keys (a symlink or a
    relative path names the same source)."""
    return os.path.realpath(path)


def merge_runs(runs: Iterable[Run]) -> list[Run]:
    """Sorted runs with overlapping or adjacent ones joined."""
    out: list[Run] = []
    for first, count in sorted(r for r in runs if r[1] > 0):
        if out and first <= out[-1][0] + out[-1][1]:
            last_first, last_count = out[-1]
            out[-1] = (last_first, max(last_count, first + count - last_first))
        else:
            out.append((first, count))
    return out


def block_runs(byte_ranges: Iterable[tuple[int, int]], offset: int, size: int,
               block_size: int) -> list[Run]:
    """Runs of the blocks of a volume (at `offset` of its source, `size` bytes) that
    source byte ranges (offset, length) touch; ranges outside the volume are ignored."""
    runs = []
    for start, length in byte_ranges:
        lo = max(start - offset, 0)
        hi = min(start + length - offset, size)
        if hi > lo:
            first = lo // block_size
            runs.append((first, -(-hi // block_size) - first))
    return merge_runs(runs)


def subtract_runs(runs: Iterable[Run], minus: Iterable[Run]) -> list[Run]:
    """The blocks of `runs` that are not in `minus` (both sorted and disjoint)."""
    out: list[Run] = []
    cut = merge_runs(minus)
    j = 0
    for first, count in runs:
        pos, end = first, first + count
        while j < len(cut) and cut[j][0] + cut[j][1] <= pos:
            j += 1
        k = j
        while pos < end:
            if k == len(cut) or cut[k][0] >= end:
                out.append((pos, end - pos))
                break
            if cut[k][0] > pos:
                out.append((pos, cut[k][0] - pos))
            pos = max(pos, cut[k][0] + cut[k][1])
            k += 1
    return out
