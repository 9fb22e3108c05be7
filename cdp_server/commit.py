"""Committing a recovery point: check that every page and chunk it references is stored,
then make it visible in one catalog transaction.

The walk goes from each volume's root down, one level at a time in batches, and skips
any page already marked complete by an earlier commit: content addressing guarantees its
subtree is the same, and garbage collection clears the mark before it could remove
anything below. So a commit costs O(changed pages), not O(volume size).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time

from cdpcore import format as fmt
from cdpcore import index
from cdpcore.api import (
    CommitRequest,
    MissingObjects,
    ObjectKind,
    PointDetail,
    PointInfo,
    PointStats,
    VerifyStatus,
    VolumeWire,
)
from cdpcore.errors import FormatError, IntegrityError, NotFoundError
from cdpcore.manifest import VolumeRecord, check_point_id

from .catalog import Location, PointRow
from .datastore import Datastore
from .errors import BadRequest, Conflict

_BATCH = 512  # pages per catalog lookup and read round
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: The catalog records a point's size as a signed 64-bit integer (SQLite's INTEGER).
MAX_POINT_BYTES = (1 << 63) - 1


def point_info(row: PointRow) -> PointInfo:
    return PointInfo(point_id=row.point_id, host=row.host, created=row.created,
                     committed=row.committed, parent=row.parent, size=row.size,
                     stats=PointStats.model_validate_json(row.stats), pinned=row.pinned,
                     verify=VerifyStatus(row.verify))


def point_detail(row: PointRow) -> PointDetail:
    return PointDetail(**point_info(row).model_dump(),
                       volumes=[VolumeWire.model_validate(v) for v in json.loads(row.volumes)],
                       manifest=row.manifest)


def _records(req: CommitRequest) -> list[VolumeRecord]:
    try:
        vols = [VolumeRecord(name=v.name, size=v.size, block_size=v.block_size, root=v.root,
                             height=v.height) for v in req.volumes]
        if req.parent is not None:
            check_point_id(req.parent)
        manifest = base64.b64decode(req.manifest, validate=True)
    except (FormatError, ValueError) as exc:  # binascii.Error, and non-ASCII text
        raise BadRequest(f"bad commit: {exc}", 422) from None
    if len({v.name for v in vols}) != len(vols):
        raise BadRequest("bad commit: two volumes have the same name", 422)
    total = sum(v.size for v in vols)
    if total > MAX_POINT_BYTES:
        raise BadRequest(f"bad commit: the volumes add up to {total} bytes, more than a "
                         f"point may hold ({MAX_POINT_BYTES} bytes)", 422)
    if not manifest or len(manifest) > MAX_MANIFEST_BYTES:
        raise BadRequest(f"bad commit: manifest of {len(manifest)} bytes", 422)
    return vols


#: A page to walk: (page ID, level, position in its level, the ID of the page at the same
#: place in the parent point's tree or None).
_Entry = tuple[bytes, int, int, bytes | None]


class _Walk:
    """Walks new pages down to the chunks they reference. Beside each new page goes the
    parent point's page at the same place: where that one is complete, every entry the two
    share is known present, so only the entries that changed are looked up. A point that
    changed a few blocks in each of many leaves then costs lookups of its changed blocks,
    not of every block those leaves name."""

    def __init__(self, ds: Datastore, host: str) -> None:
        self.ds, self.host = ds, host
        self.missing_pages: set[bytes] = set()
        self.missing_chunks: set[bytes] = set()
        #: pages walked in this commit -> (level, entry count) they were walked at
        self.walked: dict[bytes, tuple[int, int]] = {}

    def volume(self, vol: VolumeRecord, old: VolumeRecord | None) -> None:
        geometry = vol.geometry
        old_root = old.root_id if old is not None and old.root_id != fmt.ZERO_ID and (
            old.size, old.block_size, old.height) == (vol.size, vol.block_size, vol.height) \
            else None
        frontier: list[_Entry] = [] if vol.root_id == fmt.ZERO_ID else [
            (vol.root_id, vol.height, 0, old_root)]
        while frontier:
            below: list[_Entry] = []
            for start in range(0, len(frontier), _BATCH):
                below += self._pages(geometry, frontier[start:start + _BATCH])
            frontier = below

    def _read(self, pid: bytes, loc: Location) -> index.Page:
        return index.decode_page(self.ds.read_current(self.host, ObjectKind.pages, pid, loc),
                                 pid)

    def _pages(self, geometry: index.Geometry, batch: list[_Entry]) -> list[_Entry]:
        catalog = self.ds.catalog
        ids = list(dict.fromkeys(pid for pid, _, _, _ in batch))
        olds = list(dict.fromkeys(o for _, _, _, o in batch if o is not None))
        locs = catalog.locate(self.host, ObjectKind.pages, ids + olds)
        pages: dict[bytes, index.Page] = {}
        corrupted = []
        for pid in ids:
            loc = locs.get(pid)
            if loc is None or loc.damaged:
                self.missing_pages.add(pid)
            elif not loc.complete and pid not in self.walked:
                try:
                    pages[pid] = self._read(pid, loc)
                except (IntegrityError, FormatError, NotFoundError):
                    corrupted.append(pid)
                    self.missing_pages.add(pid)
        if corrupted:
            catalog.mark_damaged(self.host, ObjectKind.pages, corrupted, found=locs)
        # The parent's pages beside the new pages being walked, where complete.
        old_pages: dict[bytes, index.Page] = {}
        for pid, _, _, old in batch:
            old_loc = locs.get(old) if old is not None else None
            if pid in pages and old is not None and old_loc is not None and \
                    old_loc.complete and not old_loc.damaged and old not in old_pages:
                # Unreadable: then every entry of the new page is looked up.
                with contextlib.suppress(IntegrityError, FormatError, NotFoundError):
                    old_pages[old] = self._read(old, old_loc)
        children: list[_Entry] = []
        chunks: set[bytes] = set()
        for pid, level, position, old in batch:
            page = pages.get(pid)
            count = geometry.entries_in(level, position)
            if page is None:
                # Not read (complete, or walked already): its shape is still checked, from
                # the walk or from its stored length, so that a page cannot stand where
                # another shape belongs (an unrestorable point).
                loc = locs.get(pid)
                walked = self.walked.get(pid)
                if walked is not None and walked != (level, count):
                    raise BadRequest(f"index page {pid.hex()} is used as level {walked[0]} "
                                     f"with {walked[1]} entries and as level {level} with "
                                     f"{count} entries", 422)
                if walked is None and loc is not None and loc.complete and not loc.damaged \
                        and loc.length != fmt.PAGE_HEADER_SIZE + count * fmt.ID_SIZE:
                    raise BadRequest(f"index page {pid.hex()} has "
                                     f"{(loc.length - fmt.PAGE_HEADER_SIZE) // fmt.ID_SIZE} "
                                     f"entries where {count} belong", 422)
                continue
            if page.level != level or page.count != count:
                raise BadRequest(f"index page {pid.hex()} is level {page.level} with "
                                 f"{page.count} entries where level {level} with {count} "
                                 "entries belongs", 422)
            self.walked[pid] = (level, count)
            beside = old_pages.get(old) if old is not None else None
            if beside is not None and (beside.level, beside.count) != (level, count):
                beside = None
            for j, child in enumerate(page.ids()):
                if child == fmt.ZERO_ID:
                    continue
                old_child = beside.entry(j) if beside is not None else None
                if child == old_child:
                    continue  # below a complete page: present
                if level:
                    children.append((child, level - 1, position * fmt.PAGE_FANOUT + j,
                                     old_child if old_child != fmt.ZERO_ID else None))
                else:
                    chunks.add(child)
        if chunks:  # from the ID index alone: a chunk's location is not needed here
            self.missing_chunks.update(chunks - catalog.present(self.host, ObjectKind.chunks,
                                                                chunks))
        return children


def _parent_volumes(ds: Datastore, host: str, parent: str | None) -> dict[str, VolumeRecord]:
    """The parent point's volumes by name, if it is still there."""
    row = ds.catalog.point(host, parent) if parent is not None else None
    if row is None:
        return {}
    try:
        return {v["name"]: VolumeRecord(name=v["name"], size=v["size"],
                                        block_size=v["block_size"], root=v["root"],
                                        height=v["height"]) for v in json.loads(row.volumes)}
    except (FormatError, KeyError, TypeError, ValueError):
        return {}


def commit(ds: Datastore, host: str, req: CommitRequest) -> tuple[PointInfo, bool]:
    """Returns (the point, True if created now / False for an identical retry)."""
    vols = _records(req)
    digest = hashlib.sha256(req.model_dump_json().encode()).hexdigest()
    with ds.commit_lock():
        if ds.catalog.host_retired(host):  # removed since the request's token was checked
            raise NotFoundError(f"host {host!r} was removed")
        old = ds.catalog.point(host, req.point_id)
        if old is not None:
            if old.digest == digest:
                return point_info(old), False
            raise Conflict(f"point {req.point_id} already exists on host {host!r} with "
                           "different content")
        damage_before = ds.catalog.damage_marks(host)
        walk = _Walk(ds, host)
        before = _parent_volumes(ds, host, req.parent)
        for vol in vols:
            walk.volume(vol, before.get(vol.name))
        if walk.missing_pages or walk.missing_chunks:
            detail = (f"point {req.point_id} references {len(walk.missing_chunks)} chunks and "
                      f"{len(walk.missing_pages)} index pages the server does not have")
            raise Conflict(detail, MissingObjects(
                detail=detail, missing_chunks=sorted(c.hex() for c in walk.missing_chunks),
                missing_pages=sorted(p.hex() for p in walk.missing_pages)).model_dump())
        row = PointRow(
            host=host, point_id=req.point_id, created=req.created, committed=time.time(),
            parent=req.parent, size=sum(v.size for v in vols),
            stats=req.stats.model_dump_json(), pinned=False,
            verify=VerifyStatus.unverified.value,
            volumes=json.dumps([v.model_dump() for v in req.volumes]),
            manifest=req.manifest, digest=digest)
        # The answer before the insert: if it cannot be made, no point is left stored
        # behind an error (its retry would then find the point and fail the same way).
        info = point_info(row)
        ds.catalog.insert_point(row, sorted(walk.walked), damage_before)
    return info, True
