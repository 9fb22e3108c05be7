"""Verify without the key: re-read every object a point references and check it against
the checksum stored at upload. Damage is mapped back, through the index trees, to the
exact points, volumes and byte ranges it affects; damaged objects are marked so that
"missing" reports them and the next backup holding those blocks uploads them again."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from cdpcore import format as fmt
from cdpcore import index
from cdpcore.api import DamagedRange, ObjectKind, VerifyReport, VerifyStatus
from cdpcore.errors import FormatError, IntegrityError, NotFoundError

from .catalog import Location
from .datastore import Datastore
from .errors import CatalogDamaged

log = logging.getLogger("cdp.server.verify")

#: A damaged region below a page: (first block relative to the page, blocks, object ID).
Bad = list[tuple[int, int, bytes]]


@dataclass
class _HostCheck:
    ds: Datastore
    host: str
    chunk_ok: dict[bytes, bool] = field(default_factory=dict)
    missing: set[bytes] = field(default_factory=set)
    damaged_pages: set[bytes] = field(default_factory=set)
    memo: dict[tuple[bytes, int], Bad] = field(default_factory=dict)
    #: where each damaged object was read: only that copy is marked, not one uploaded
    #: (healing) or moved by gc since, which may be intact
    found: dict[ObjectKind, dict[bytes, Location]] = field(
        default_factory=lambda: {ObjectKind.chunks: {}, ObjectKind.pages: {}})
    #: objects marked damaged (by a read that failed once: a transient fault, a pack put
    #: back since) whose copy now reads intact, and where: the mark is cleared there, or
    #: fetch would keep refusing what verify calls ok
    intact: dict[ObjectKind, dict[bytes, Location]] = field(
        default_factory=lambda: {ObjectKind.chunks: {}, ObjectKind.pages: {}})

    def _read_page(self, pid: bytes) -> index.Page | None:
        loc = self.ds.catalog.locate(self.host, ObjectKind.pages, [pid]).get(pid)
        if loc is None:
            self.missing.add(pid)
            return None
        try:
            page = index.decode_page(
                self.ds.read_current(self.host, ObjectKind.pages, pid, loc), pid)
        except (IntegrityError, FormatError, NotFoundError):
            self.damaged_pages.add(pid)
            self.found[ObjectKind.pages][pid] = loc
            return None
        if loc.damaged:
            self.intact[ObjectKind.pages][pid] = loc
        return page

    def _check_chunks(self, ids: list[bytes]) -> None:
        todo = [i for i in dict.fromkeys(ids) if i not in self.chunk_ok]
        locs = self.ds.catalog.locate(self.host, ObjectKind.chunks, todo)
        for cid in sorted(todo, key=lambda i: (locs[i].pack, locs[i].offset) if i in locs
                          else ("", 0)):
            loc = locs.get(cid)
            if loc is None:
                self.missing.add(cid)
                self.chunk_ok[cid] = False
                continue
            try:
                self.ds.read_current(self.host, ObjectKind.chunks, cid, loc)
                self.chunk_ok[cid] = True
                if loc.damaged:
                    self.intact[ObjectKind.chunks][cid] = loc
            except (IntegrityError, NotFoundError):
                self.chunk_ok[cid] = False
                self.found[ObjectKind.chunks][cid] = loc

    def bad(self, pid: bytes, level: int, geometry: index.Geometry) -> Bad:
        """Damage below page `pid`, memoised: subtrees shared by many points are read once."""
        key = (pid, level)
        if key in self.memo:
            return self.memo[key]
        page = self._read_page(pid)
        out: Bad = []
        if page is None or page.level != level:
            out = [(0, geometry.span(level), pid)]
        elif level == 0:
            ids = list(page.ids())
            self._check_chunks([i for i in ids if i != fmt.ZERO_ID])
            out = [(j, 1, cid) for j, cid in enumerate(ids)
                   if cid != fmt.ZERO_ID and not self.chunk_ok[cid]]
        else:
            below = geometry.span(level - 1)
            for j, child in enumerate(page.ids()):
                if child != fmt.ZERO_ID:
                    out += [(j * below + rel, n, oid)
                            for rel, n, oid in self.bad(child, level - 1, geometry)]
        self.memo[key] = out
        return out


def verify(ds: Datastore) -> VerifyReport:
    problems = ds.catalog.integrity_problems()
    if problems:
        # Nothing the catalog says can be trusted: stop before reading any of it.
        raise CatalogDamaged(f"the catalog is damaged ({'; '.join(problems[:5])}): restore "
                             "it from a backup of the datastore; the packs are intact "
                             "unless verify said otherwise before")
    ranges: list[DamagedRange] = []
    damaged_chunks: set[bytes] = set()
    missing: set[bytes] = set()
    statuses: list[tuple[str, str, str]] = []
    checked_chunks = checked_pages = 0
    bad_points: set[str] = set()
    for host in ds.catalog.host_names():
        check = _HostCheck(ds, host)
        host_ranges: list[DamagedRange] = []
        # A point whose record (volumes, manifest) changed since its commit cannot be
        # opened; its volumes are not to be trusted, and are not walked.
        bad_records = ds.catalog.damaged_records(host)
        for row in ds.catalog.point_rows(host):
            if row.point_id in bad_records:
                log.warning("point %s of host %s: its volumes or manifest changed in the "
                            "catalog since its commit", row.point_id, host)
                statuses.append((host, row.point_id, VerifyStatus.damaged.value))
                continue
            point_ranges = []
            for vol in json.loads(row.volumes):
                geometry = index.Geometry(size=vol["size"], block_size=vol["block_size"])
                root = bytes.fromhex(vol["root"])
                if root == fmt.ZERO_ID:
                    continue
                for rel, n, oid in check.bad(root, vol["height"], geometry):
                    offset = rel * geometry.block_size
                    length = min(n * geometry.block_size, geometry.size - offset)
                    point_ranges.append(DamagedRange(point_id=row.point_id, volume=vol["name"],
                                                     offset=offset, length=length,
                                                     chunk=oid.hex()))
            host_ranges += point_ranges
            statuses.append((host, row.point_id, (VerifyStatus.damaged if point_ranges
                                                  else VerifyStatus.ok).value))
        if host_ranges or bad_records:
            # Verify takes no lock and may run for hours beside the hourly prune and gc: a
            # point listed above may have been deleted since, and its objects freed, before
            # they were read. That is retention, not damage (and exit 4 would fail the
            # verify unit). Such objects were gone only after their point was, so a look
            # now, after the reads, finds every such point; damage is reported, and its
            # objects named, only for points still there.
            still = {r.point_id for r in ds.catalog.point_rows(host)}
            host_ranges = [r for r in host_ranges if r.point_id in still]
            bad_points |= bad_records & still
        ranges += host_ranges
        named = {bytes.fromhex(r.chunk) for r in host_ranges}
        # Every copy read corrupted is marked, also one only a deleted point named: a point
        # committed since may use it. A row gc freed is gone, and is not marked.
        bad_chunks = {c for c, ok in check.chunk_ok.items() if not ok} - check.missing
        if bad_chunks:
            ds.catalog.mark_damaged(host, ObjectKind.chunks, sorted(bad_chunks),
                                    found=check.found[ObjectKind.chunks])
        if check.damaged_pages:
            ds.catalog.mark_damaged(host, ObjectKind.pages, sorted(check.damaged_pages),
                                    found=check.found[ObjectKind.pages])
        if check.missing & named:
            # An object without a row cannot be marked (which clears "complete" on the
            # way): clear it here, or commits skip the complete pages above the hole, and
            # the next point is committed over it instead of being asked for it (409).
            ds.catalog.keep_complete_only(host, set())
        for kind, intact in check.intact.items():
            if intact:  # only where the row still points at the copy read (as marking)
                ds.catalog.clear_damaged(host, kind, intact)
        damaged_chunks |= bad_chunks & named
        missing |= {m for m in check.missing if m in check.chunk_ok and m in named}
        checked_chunks += len(check.chunk_ok)
        checked_pages += len({pid for pid, _ in check.memo})
    ds.catalog.set_verify(statuses)
    return VerifyReport(
        checked_chunks=checked_chunks, checked_pages=checked_pages,
        damaged_chunks=sorted(c.hex() for c in damaged_chunks),
        missing_chunks=sorted(c.hex() for c in missing),
        damaged_points=sorted({r.point_id for r in ranges} | bad_points), ranges=ranges)
