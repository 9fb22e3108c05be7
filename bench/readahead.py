"""The scan's read pattern, with and without reading ahead (issue #4): worker processes
read the workload image in 16 MiB segments with direct I/O, as the agent's sealing workers
do (hotcopy/sealpool.py), and hash every non-zero 16 KiB block with the keyed chunk ID.
`serial` reads a segment, then hashes it (the agent today); `ahead` has a thread in each
worker read its next segment into a second buffer while the worker hashes the current
one. Each worker takes every n-th segment; the page cache is dropped before each pass,
and the modes alternate. Only reading and hashing: no sealing, no server.

    .venv/bin/python -m bench.readahead [--size 2G] [--workers 3] [--rounds 3]
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import click

from cdpcore import format as fmt
from cdpcore.crypto import KeySet, is_zero
from cdpcore.directio import ALIGN, AlignedBuffer, DirectFile
from hotcopy.scan import SEGMENT_BYTES

from .measure import cold
from .run import prepare
from .workload import parse_size

MODES = ("serial", "ahead")
_KEYS = KeySet.from_master(bytes(range(64)))  # a fixed key: this is a benchmark


def _hash(view: memoryview) -> int:
    """The scan's work per segment: each block copied out, zero-checked and hashed."""
    data = 0
    for start in range(0, len(view), fmt.DEFAULT_BLOCK_SIZE):
        block = bytes(view[start:start + fmt.DEFAULT_BLOCK_SIZE])
        if not is_zero(block):
            _KEYS.chunk_id(block)
            data += 1
    return data


def _worker(image: str, offsets: list[int], mode: str) -> int:
    """Read and hash the segments at `offsets`; returns the non-zero blocks seen."""
    fd = os.open(image, os.O_RDONLY)
    try:
        files = [DirectFile(image, fd, os.O_RDONLY, AlignedBuffer(SEGMENT_BYTES + 2 * ALIGN))
                 for _ in range(2 if mode == "ahead" else 1)]
        if mode == "serial" or not offsets:
            return sum(_hash(files[0].read(at, SEGMENT_BYTES)) for at in offsets)
        data = 0
        with ThreadPoolExecutor(1) as reader:
            # Segment k+1 is read into the other buffer while k is hashed; k+2 is asked
            # for only once k is done with. A read's error comes out of result().
            pending = reader.submit(files[0].read, offsets[0], SEGMENT_BYTES)
            for k in range(len(offsets)):
                view = pending.result()
                if k + 1 < len(offsets):
                    pending = reader.submit(files[(k + 1) % 2].read, offsets[k + 1],
                                            SEGMENT_BYTES)
                data += _hash(view)
        return data
    finally:
        os.close(fd)


def one_pass(image: Path, workers: int, mode: str) -> tuple[float, int]:
    """(seconds, non-zero blocks) of one cold pass over `image`."""
    offsets = list(range(0, image.stat().st_size, SEGMENT_BYTES))
    cold("drop")(image)
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        data = sum(pool.map(_worker, [str(image)] * workers,
                            [offsets[i::workers] for i in range(workers)], [mode] * workers))
    return time.perf_counter() - started, data


@click.command()
@click.option("--size", default="2G", show_default=True, help="Workload image size.")
@click.option("--work", default="/var/tmp/cdp-bench", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--workers", default=3, show_default=True, type=click.IntRange(min=1),
              help="Reading processes (the agent's default on 2 CPUs is 3).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1))
def main(size: str, work: str, workers: int, rounds: int) -> None:
    """Read and hash the workload image as the scan does, with and without read-ahead."""
    image = prepare(Path(work), parse_size(size), 9).base
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for n in range(rounds):
        for mode in MODES:
            secs, data = one_pass(image, workers, mode)
            times[mode].append(secs)
            click.echo(f"round {n + 1} {mode:6}: {secs:.2f} s ({data} non-zero blocks)")
    for mode in MODES:
        click.echo(f"median {mode:6}: {statistics.median(times[mode]):.2f} s "
                   f"({min(times[mode]):.2f}-{max(times[mode]):.2f})")


if __name__ == "__main__":
    main()
