"""Garbage collection: mark from every point's index trees, sweep from the catalog.

Never from file timestamps or listings (object-store semantics). An object survives if a
point references it, or if it was uploaded or reported present by a "missing" query
within the grace period: an in-flight backup may be about to commit a reference to it.
Packs left with no live object are deleted; packs mostly dead are rewritten.

A host's mark, which reads every index page of its points, runs before the commit lock
is taken, so agents' commits go on meanwhile; under the lock only the points committed
since are walked (their trees are mostly shared, and shared pages are not read twice)
before anything of the host is deleted. A point deleted meanwhile keeps its objects until
the next gc. The packs are swept under the lock too, after the last host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

from cdpcore import format as fmt
from cdpcore import index
from cdpcore.api import GcReport, ObjectKind, SkippedHost
from cdpcore.errors import FormatError, IntegrityError, NotFoundError

from .datastore import Datastore
from .errors import StorageFull
from .store import new_pack_name

log = logging.getLogger("cdp.server.gc")

#: A pack still pending after this long belongs to an upload that died.
PENDING_TIMEOUT = 3600.0
#: Rewrite a pack when less than this share of its bytes is still live.
REWRITE_BELOW = 0.5


class _Unreadable(Exception):
    pass


@dataclass
class Marks:
    """What a host's points reference, and which points were walked for it."""

    pages: set[bytes] = field(default_factory=set)
    chunks: set[bytes] = field(default_factory=set)
    points: set[str] = field(default_factory=set)


def mark(ds: Datastore, host: str, marks: Marks | None = None) -> Marks:
    """Add the objects of the host's points not walked yet to `marks` (a fresh one when
    None) and return it. Raises _Unreadable, naming the page and a point and volume that
    reference it, if a referenced page cannot be read: its children are then unknown,
    so nothing of the host may be swept."""
    marks = marks or Marks()
    pages, chunks = marks.pages, marks.chunks
    todo: list[bytes] = []
    #: a (point, volume) whose tree holds the page, first found (pages are shared)
    owner: dict[bytes, tuple[str, str]] = {}
    walking = [row for row in ds.catalog.point_rows(host) if row.point_id not in marks.points]
    for row in walking:
        for v in json.loads(row.volumes):
            root = bytes.fromhex(v["root"])
            owner.setdefault(root, (row.point_id, v["name"]))
            todo.append(root)
    while todo:
        batch = [p for p in dict.fromkeys(todo) if p != fmt.ZERO_ID and p not in pages]
        todo = []
        locs = ds.catalog.locate(host, ObjectKind.pages, batch)
        for pid in batch:
            point_id, volume = owner[pid]
            where = f"index page {pid.hex()} (point {point_id}, volume {volume})"
            loc = locs.get(pid)
            if loc is None:
                raise _Unreadable(f"{where} is missing from the catalog")
            try:
                page = index.decode_page(ds.read_object(pid, loc), pid)
            except (IntegrityError, FormatError, NotFoundError) as exc:
                raise _Unreadable(f"{where} is unreadable: {exc}") from None
            pages.add(pid)
            ids = [i for i in page.ids() if i != fmt.ZERO_ID]
            if page.level:
                for child in ids:
                    owner.setdefault(child, (point_id, volume))
                todo += ids
            else:
                chunks.update(ids)
    marks.points.update(row.point_id for row in walking)
    return marks


def gc(ds: Datastore, grace: float) -> GcReport:
    removed = {ObjectKind.chunks: 0, ObjectKind.pages: 0}
    live_total = kept = 0
    skipped: list[SkippedHost] = []
    cutoff = time.time() - grace
    for host in ds.catalog.host_names():  # one host's marks in memory at a time
        early: Marks | None = None
        # An unreadable page may be one another gc freed since this one listed its point
        # (deleted meanwhile): the host is then marked again under the lock.
        with contextlib.suppress(_Unreadable):
            early = mark(ds, host)
        with ds.commit_lock():
            try:
                marks = mark(ds, host, early)
            except _Unreadable as exc:
                # Reported, not just logged: until the page is back, gc frees nothing of
                # this host, run after run (the CLI exits 4, failing its systemd unit).
                log.warning("gc skips host %s: %s", host, exc, extra={"host": host})
                skipped.append(SkippedHost(host=host, reason=str(exc)))
                continue
            live_total += len(marks.chunks)
            # Only pages of a point may keep "complete": a subtree outside every point may
            # lose objects to this or a later sweep. Cleared before anything is deleted, so
            # a gc stopped half-way leaves no complete mark above a deleted object.
            ds.catalog.keep_complete_only(host, marks.pages)
            live = {ObjectKind.pages: marks.pages, ObjectKind.chunks: marks.chunks}
            for kind in (ObjectKind.chunks, ObjectKind.pages):
                dead = []
                for oid, seen in ds.catalog.object_ages(host, kind):
                    if oid in live[kind]:
                        continue
                    if seen >= cutoff:
                        kept += 1
                    else:
                        dead.append(oid)
                removed[kind] += ds.catalog.delete_unseen(host, kind, dead, cutoff)
    with ds.commit_lock():
        freed = _sweep_packs(ds, cutoff)
    return GcReport(live_chunks=live_total, removed_chunks=removed[ObjectKind.chunks],
                    removed_pages=removed[ObjectKind.pages], freed_bytes=freed,
                    kept_in_grace=kept, skipped_hosts=skipped)


def _sweep_packs(ds: Datastore, cutoff: float) -> int:
    usage = ds.catalog.pack_usage()
    freed = 0
    now = time.time()
    for pack in ds.catalog.packs():
        if pack.state == "retired":  # a gc stopped before it deleted the file
            _delete_retired(ds, pack.name)
            freed += pack.size
            continue
        if pack.state == "pending":
            # The row goes first, and only if still pending: an upload that outlasted
            # the timeout may finish meanwhile, and then its objects live in the file.
            # Once the row is gone such an upload fails whole (add_objects finds no pack).
            if pack.created < now - PENDING_TIMEOUT and ds.catalog.forget_pending([pack.name]):
                ds.store.delete(pack.name)
                freed += pack.size
            continue
        count, live_bytes = usage.get(pack.name, (0, 0))
        if count == 0:
            if ds.catalog.retire_pack(pack.name):
                _delete_retired(ds, pack.name)
                freed += pack.size
        elif live_bytes < pack.size * REWRITE_BELOW and pack.created < cutoff:
            freed += _rewrite(ds, pack.name, pack.size)
    return freed


def _rewrite(ds: Datastore, name: str, size: int) -> int:
    """Copy a pack's live objects into a new pack, repoint them, delete the old one."""
    parts, moves, offset = [], [], 0
    for host, kind, oid, loc in ds.catalog.pack_objects(name):
        try:
            blob = ds.read_object(oid, loc)
        except (IntegrityError, NotFoundError):
            return 0  # damage is verify's business: keep the pack as it is
        parts.append(blob)
        moves.append((host, kind, oid, loc.offset, offset))
        offset += loc.length
    new = new_pack_name()
    ds.catalog.begin_pack(new, offset)
    try:
        ds.store.put(new, parts)
    except StorageFull:
        # No room for the live objects: the datastore is full, and gc is what frees it.
        # The pack stays as it is (a later gc rewrites it), the packs nothing lives in
        # are freed all the same, and no pending pack is left behind.
        if ds.catalog.forget_pending([new]):
            ds.store.delete(new)
        return 0
    ds.catalog.move_objects(name, new, moves)
    _delete_retired(ds, name)
    return size - offset


def _delete_retired(ds: Datastore, name: str) -> None:
    """The file first, then the row: a gc stopped in between leaves a retired row (the
    next gc or start-up finishes it), never a pack file the catalog has forgotten."""
    ds.store.delete(name)
    ds.catalog.forget_retired(name)
