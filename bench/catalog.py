"""The server catalog on its own (cdp_server.sqlite_catalog): the object rows of a full
backup and then of an incremental, added as the upload path adds them (a "missing" query,
a pending pack, one transaction per request), with the CPU and wall time of each part and
the space per object of every table and index (SQLite's dbstat).

    .venv/bin/python -m bench.catalog [--objects 74000] [--increment 9000] [--batch 500]

The defaults are the 2 GiB workload of the side-by-side benchmark: 74,000 chunks in the
full backup, 9,000 in the incremental, and about 500 chunks in an 8 MiB request.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path

import click

from cdp_server.sqlite_catalog import SqliteCatalog
from cdpcore.api import ObjectKind, Role

HOST = "bench-host"
BLOB = 11_000  # a compressed 16 KiB chunk's blob, about


def add(catalog: SqliteCatalog, objects: int, batch: int) -> dict[str, float]:
    """Add `objects` new random chunk IDs in requests of `batch`: each request asks which
    are missing, registers its pack and adds the rows, as Datastore.upload does."""
    lookup = insert = 0.0
    # A checkout from before present() (catalog version 1) looks up with locate().
    missing = getattr(catalog, "present", catalog.locate)
    wall = time.perf_counter()
    for _ in range(objects // batch):
        # (id, offset, length, checksum): a version 2 record's CRC-32
        rows = [(os.urandom(32), n * BLOB, BLOB, os.urandom(4)) for n in range(batch)]
        pack = f"packs/{os.urandom(1).hex()}/{os.urandom(16).hex()}.pack"
        start = time.process_time()
        missing(HOST, ObjectKind.chunks, [r[0] for r in rows])
        lookup += time.process_time() - start
        start = time.process_time()
        catalog.begin_pack(pack, batch * BLOB)
        catalog.add_objects(HOST, ObjectKind.chunks, pack, rows, time.time())
        insert += time.process_time() - start
    return {"lookup_cpu_s": lookup, "insert_cpu_s": insert,
            "wall_s": time.perf_counter() - wall}


def space(path: Path) -> dict[str, int]:
    """Bytes of pages per table and index."""
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name "
                               "HAVING sum(pgsize) > 4096 * 2 ORDER BY 2 DESC"))
    finally:
        db.close()


@click.command()
@click.option("--objects", default=74_000, show_default=True, help="Chunks of the full backup.")
@click.option("--increment", default=9_000, show_default=True,
              help="Chunks of the incremental after it.")
@click.option("--batch", default=500, show_default=True, help="Chunks per upload request.")
@click.option("--work", default="/var/tmp", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
def main(objects: int, increment: int, batch: int, work: Path) -> None:
    """Time the catalog's part of uploads and show its space per object."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        path = Path(tmp) / "catalog.sqlite"
        catalog = SqliteCatalog(path)
        catalog.create_host(HOST, {Role.agent: "a", Role.restore: "r"})
        for label, count in (("full", objects), ("incremental", increment)):
            t = add(catalog, count, batch)
            click.echo(f"{label}: {count:,} objects, lookups {t['lookup_cpu_s']:.2f} s CPU, "
                       f"inserts {t['insert_cpu_s']:.2f} s CPU, {t['wall_s']:.2f} s wall")
        total = objects + increment
        for name, size in space(path).items():
            click.echo(f"  {name}: {size / 2**20:.2f} MiB, {size / total:.0f} bytes per object")


if __name__ == "__main__":
    main()
