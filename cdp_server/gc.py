"""Garbage collection: mark from every point's index trees, sweep from the catalog.

Never from file timestamps or listings (object-store semantics). An object survives if a
point references it, or if it was uploaded or reported present by a "missing" query
within the grace period: an in-flight backup may be about to commit a reference to it.
Packs left with no live object are deleted; packs mostly dead are rewritten.
"""

from __future__ import annotations

import json
import logging
import time

from cdpcore import format as fmt
from cdpcore import index
from cdpcore.api import GcReport, ObjectKind
from cdpcore.errors import FormatError, IntegrityError, NotFoundError

from .catalog import Location
from .datastore import Datastore
from .store import new_pack_name

log = logging.getLogger("cdp.server.gc")

#: A pack still pending after this long belongs to an upload that died.
PENDING_TIMEOUT = 3600.0
#: Rewrite a pack when less than this share of its bytes is still live.
REWRITE_BELOW = 0.5


class _Unreadable(Exception):
    pass


def mark(ds: Datastore, host: str) -> tuple[set[bytes], set[bytes]]:
    """(live pages, live chunks) of a host. Raises _Unreadable if a referenced page cannot
    be read: its children are then unknown, so nothing of the host may be swept."""
    pages: set[bytes] = set()
    chunks: set[bytes] = set()
    todo: list[bytes] = []
    for row in ds.catalog.point_rows(host):
        todo += [bytes.fromhex(v["root"]) for v in json.loads(row.volumes)]
    while todo:
        batch = [p for p in dict.fromkeys(todo) if p != fmt.ZERO_ID and p not in pages]
        todo = []
        locs = ds.catalog.locate(host, ObjectKind.pages, batch)
        for pid in batch:
            loc = locs.get(pid)
            if loc is None:
                raise _Unreadable(f"index page {pid.hex()} of host {host!r} is missing")
            try:
                page = index.decode_page(ds.read_object(pid, loc), pid)
            except (IntegrityError, FormatError, NotFoundError) as exc:
                raise _Unreadable(f"index page {pid.hex()} of host {host!r}: {exc}") from None
            pages.add(pid)
            ids = [i for i in page.ids() if i != fmt.ZERO_ID]
            if page.level:
                todo += ids
            else:
                chunks.update(ids)
    return pages, chunks


def gc(ds: Datastore, grace: float) -> GcReport:
    removed = {"chunks": 0, "pages": 0}
    live_total = kept = 0
    freed = 0
    with ds.commit_lock():
        cutoff = time.time() - grace
        db = ds.catalog.read()
        for host in ds.catalog.host_names():
            try:
                live_pages, live_chunks = mark(ds, host)
            except _Unreadable as exc:
                log.warning("gc skips host: %s", exc, extra={"host": host})
                continue
            live_total += len(live_chunks)
            live = {"pages": live_pages, "chunks": live_chunks}
            for kind in ("chunks", "pages"):
                dead, recent = [], 0
                for oid, seen in db.execute("SELECT id, seen FROM objects WHERE host = ? AND "
                                            "kind = ?", (host, kind)):
                    if oid in live[kind]:
                        continue
                    if seen >= cutoff:
                        recent += 1
                    else:
                        dead.append(oid)
                kept += recent
                with ds.catalog.write() as wdb:
                    # `seen < cutoff` again: a "missing" query may have refreshed it since.
                    cur = wdb.executemany("DELETE FROM objects WHERE host = ? AND kind = ? AND "
                                          "id = ? AND seen < ?",
                                          [(host, kind, oid, cutoff) for oid in dead])
                    removed[kind] += max(cur.rowcount, 0)
            # Only pages of a point may keep "complete": a subtree outside every point may
            # lose objects to this or a later sweep.
            with ds.catalog.write() as wdb:
                wdb.executemany("UPDATE objects SET complete = 0 WHERE host = ? AND "
                                "kind = 'pages' AND id = ?",
                                [(host, pid) for (pid,) in db.execute(
                                    "SELECT id FROM objects WHERE host = ? AND kind = 'pages' "
                                    "AND complete", (host,)) if pid not in live_pages])
        freed = _sweep_packs(ds, cutoff)
    return GcReport(live_chunks=live_total, removed_chunks=removed["chunks"],
                    removed_pages=removed["pages"], freed_bytes=freed, kept_in_grace=kept)


def _sweep_packs(ds: Datastore, cutoff: float) -> int:
    db = ds.catalog.read()
    usage = {name: (n, live) for name, n, live in db.execute(
        "SELECT pack, count(*), sum(length) FROM objects GROUP BY pack")}
    freed = 0
    now = time.time()
    for name, state, created, size in db.execute(
            "SELECT name, state, created, size FROM packs").fetchall():
        if state == "pending":
            if created < now - PENDING_TIMEOUT:
                with ds.catalog.write() as wdb:
                    wdb.execute("DELETE FROM packs WHERE name = ?", (name,))
                ds.store.delete(name)
                freed += size
            continue
        count, live_bytes = usage.get(name, (0, 0))
        if count == 0:
            with ds.catalog.write() as wdb:
                # Re-checked in the transaction: an upload may not point here, but be sure.
                if wdb.execute("SELECT 1 FROM objects WHERE pack = ? LIMIT 1",
                               (name,)).fetchone():
                    continue
                wdb.execute("DELETE FROM packs WHERE name = ?", (name,))
            ds.store.delete(name)
            freed += size
        elif live_bytes < size * REWRITE_BELOW and created < cutoff:
            freed += _rewrite(ds, name, size)
    return freed


def _rewrite(ds: Datastore, name: str, size: int) -> int:
    """Copy a pack's live objects into a new pack, repoint them, delete the old one."""
    rows = ds.catalog.read().execute(
        "SELECT host, kind, id, offset, length, sha256, damaged, complete FROM objects "
        "WHERE pack = ? ORDER BY offset", (name,)).fetchall()
    parts, moves, offset = [], [], 0
    for host, kind, oid, old_offset, length, digest, damaged, complete in rows:
        loc = Location(name, old_offset, length, digest, bool(damaged), bool(complete))
        try:
            blob = ds.read_object(oid, loc)
        except (IntegrityError, NotFoundError):
            return 0  # damage is verify's business: keep the pack as it is
        parts.append(blob)
        moves.append((host, kind, oid, old_offset, offset))
        offset += length
    new = new_pack_name()
    ds.catalog.begin_pack(new, offset)
    ds.store.put(new, b"".join(parts))
    with ds.catalog.write() as wdb:
        wdb.executemany("UPDATE objects SET pack = ?, offset = ? WHERE host = ? AND kind = ? "
                        "AND id = ? AND pack = ? AND offset = ?",
                        [(new, new_off, h, k, oid, name, old)
                         for h, k, oid, old, new_off in moves])
        wdb.execute("UPDATE packs SET state = 'done' WHERE name = ?", (new,))
        wdb.execute("DELETE FROM packs WHERE name = ?", (name,))
    ds.store.delete(name)
    return size - offset
