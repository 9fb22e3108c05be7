"""One recovery point: capture the layout, snapshot the sources, find and upload the
changed blocks, upload the index pages, commit. The library entry point the CLI, the demo
and the benchmarks share:

    backup(remote, host, codec, sources, state_dir, *, tracking="scan", changed=None,
           ...) -> PointInfo
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cdpcore import format as fmt
from cdpcore import index
from cdpcore.api import CommitRequest, ObjectKind, PointInfo, PointStats, VolumeWire
from cdpcore.client import MissingObjectsError
from cdpcore.crypto import BlobCodec
from cdpcore.errors import FormatError, IntegrityError, NotFoundError, ServerError, UsageError
from cdpcore.index import Geometry
from cdpcore.manifest import Manifest, VolumeRecord, check_name, new_point_id

from . import era, sealpool, snapshot
from .capture import VolumeSpec, capture
from .changes import Run, block_runs, check_ranges, merge_runs, source_key
from .config import DEFAULT_MAX_FREEZE
from .errors import SourceError
from .remote import Remote
from .scan import Progress, ScanResult, scan_volume
from .state import HostState, IdFile, StateDir, VolumeState
from .transfer import (
    PageUploader,
    RetryPolicy,
    Sender,
    Throttle,
    UploadStats,
    retrying,
)
from .verify import open_point

log = logging.getLogger("cdp.agent.backup")
Tracking = Literal["scan", "era"]
#: Points listed to find the latest one.
LATEST_WINDOW = 8
#: Index leaves a point's changes may touch and still be patched in memory (fetched and
#: patched copies of 8 KiB each: 32 MiB at most); more (thousands of scattered writes on
#: a large volume) and the volume's index is built again from the local ID file.
MAX_PATCHED_LEAVES = 2048
#: Workers by default, whatever the CPU count. A worker holds about 80 MiB in a full read
#: (its 16 MiB read buffer, the batch it seals and the one it uploads, Python itself):
#: three and the parent fit the systemd unit's MemoryMax=384M, one per CPU of a large
#: server would not, and the unit's CPU quota (half a core) gives more nothing to do.
#: `workers` in the configuration sets more.
MAX_DEFAULT_WORKERS = 3


@dataclass
class BackupOptions:
    full_scan_every: int = 0  # verify tracking with a full scan every N points; 0: never
    bandwidth: int = 0  # bytes/s; 0: no cap
    reflink: bool = True
    #: Record the free space of ext2/3/4 and XFS volumes as zeros instead of reading it.
    skip_free: bool = False
    hostname: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Seconds a filesystem may stay frozen for a read (0: no limit); past that the guard
    #: thaws it and the point fails.
    max_freeze: float = DEFAULT_MAX_FREEZE


@dataclass
class _Volume:
    spec: VolumeSpec
    geometry: Geometry
    ids: IdFile
    trusted: bool
    old_root: bytes
    scan: ScanResult | None = None


def _latest(remote: Remote, host: str, policy: RetryPolicy) -> PointInfo | None:
    # Only the newest few (by creation time, as the server lists them): a point a minute
    # must not cost a listing of every point the host has. A few, not one, so a tie in
    # creation time is still broken by commit time.
    points = retrying(policy, "listing points", lambda: remote.points(host, limit=LATEST_WINDOW))
    return max(points, key=lambda p: (p.created, p.committed), default=None)


#: How much later than the latest point a point is stamped when the clock says earlier.
_CLOCK_STEP = 1e-3


def _creation_time(latest: PointInfo | None) -> float:
    """Now, but never before the latest point: points are ordered by creation time (the
    next point's trust in the local state, `latest` for a restore), and a wall clock
    stepped back (NTP correcting a clock that ran ahead) would otherwise make the point
    before the step the latest one until the clock caught up, every point in between a
    full scan chained to it."""
    now = time.time()
    if latest is not None and now <= latest.created:
        log.warning("the clock is %.0f s behind the latest point %s: this point is stamped "
                    "just after it", latest.created - now, latest.point_id)
        return latest.created + _CLOCK_STEP
    return now


def _doubt(state: HostState, latest: PointInfo | None, opts: BackupOptions) -> str | None:
    """Why the whole chain must be rescanned, or None when the local state can be trusted."""
    if state.point_id is None:
        return "no local state of a committed point"
    if latest is None or latest.point_id != state.point_id:
        return "local state is not of the server's latest point"
    if opts.full_scan_every and state.points_since_full + 1 >= opts.full_scan_every:
        return f"periodic full scan (every {opts.full_scan_every} points)"
    return None


def default_workers(cpus: int | None) -> int:
    """Workers when the configuration names none. One more than the CPUs: a worker
    waiting for the server's answer leaves its core to the spare one (2 cores, the
    benchmark's full backup, workers uploading per segment: 6.4-6.9 s with 3 workers,
    7.5-7.8 s with 2). At most MAX_DEFAULT_WORKERS: each holds about 80 MiB."""
    return min((cpus or 2) + 1, MAX_DEFAULT_WORKERS)


def backup(remote: Remote, host: str, codec: BlobCodec, sources: list[str],
           state_dir: str | os.PathLike[str], *, tracking: Tracking = "scan",
           block_size: int = fmt.DEFAULT_BLOCK_SIZE, workers: int = 0,
           progress: Progress | None = None, on_total: Callable[[int], None] | None = None,
           options: BackupOptions | None = None,
           changed: Mapping[str, Iterable[tuple[int, int]]] | None = None) -> PointInfo:
    """Take one recovery point of `sources` (block devices or image files). `workers`:
    hashing, sealing and uploading processes (0: `default_workers`). `on_total` is
    told the total bytes to read (for a progress bar); `progress` each byte count read.

    `changed`: source path -> (offset, length) byte ranges written since the last point
    (a caller that knows its writes). When the local state is trusted, only the blocks
    touching them are read for that source's volumes (as with dm-era); otherwise, and for
    sources it does not name, every block is read."""
    opts = options or BackupOptions()
    check_name("host", host)
    Geometry(size=0, block_size=block_size)  # validates the block size
    if not sources:
        raise UsageError("nothing to back up: name at least one device or image file")
    listed = check_ranges(changed, sources) if changed is not None else {}
    store = StateDir(state_dir, host)
    with store.lock():
        return _take_point(remote, host, codec, sources, store, opts, tracking=tracking,
                           block_size=block_size, workers=workers, progress=progress,
                           on_total=on_total, changed=changed, listed=listed)


def _take_point(remote: Remote, host: str, codec: BlobCodec, sources: list[str],
                store: StateDir, opts: BackupOptions, *, tracking: Tracking,
                block_size: int, workers: int, progress: Progress | None,
                on_total: Callable[[int], None] | None,
                changed: Mapping[str, Iterable[tuple[int, int]]] | None,
                listed: dict[str, list[tuple[int, int]]]) -> PointInfo:
    """backup() itself, under the host's lock."""
    started = time.monotonic()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        phases[name] = time.monotonic() - started - sum(phases.values())

    state = store.load()
    store.remove_other_ids(state)
    layout, specs = capture(sources, opts.hostname or host)
    for spec in specs:  # before anything is read or sent, not at the index
        try:
            check_name("volume", spec.name)
        except FormatError as exc:
            raise SourceError(f"{spec.path}: {exc}; an image file's name becomes its "
                              "volumes' names") from None
    lap("capture")
    snapshot.cleanup_leftovers(specs, store.dir)
    latest = _latest(remote, host, opts.retry)
    doubt = _doubt(state, latest, opts)
    if doubt:
        log.info("full scan: %s", doubt)
    damaged = set(retrying(opts.retry, "asking for damaged chunks",
                           lambda: remote.damaged(host)))
    lap("server state")
    stats = UploadStats()
    throttle = Throttle(opts.bandwidth)  # shared by this process and the workers
    sender = Sender(remote, host, opts.retry, throttle, stats)
    point_id = new_point_id()
    # Dirty from here on: a crash before the commit is answered leaves a state that the
    # next run distrusts.
    previous = HostState(**{**state.__dict__})
    state.point_id = None
    store.save(state)
    if on_total is not None:
        on_total(sum(s.size for s in specs))
    workers = workers or default_workers(os.cpu_count())
    # The era checkpoint comes before the snapshot: a write racing with it is read again
    # at the next point rather than missed.
    eras = _checkpoint_eras(specs) if tracking == "era" else {}
    created = _creation_time(latest)
    # A point after doubt may resend much that the server holds: ask what it lacks first.
    uploads = sealpool.Uploads(remote, host, opts.retry, throttle,
                               ask_first=doubt is not None and latest is not None)
    with snapshot.take(specs, store.dir, reflink=opts.reflink,
                       max_freeze=opts.max_freeze) as held, \
            sealpool.SealPool(codec, damaged, workers, uploads) as pool:
        views = held.views
        volumes: list[_Volume] = []
        lap("snapshot and workers")
        # After a source's last volume (capture lists a disk's volumes together, a PV
        # that LVM does not show comes last), its freeze, if any, ends.
        last_of_source = {spec.path: i for i, spec in enumerate(specs)}
        try:
            for i, spec in enumerate(specs):
                geometry = Geometry(size=spec.size, block_size=block_size)
                old = previous.volumes.get(spec.name)
                ids = store.open_ids(spec.name, geometry.blocks)
                trusted = (doubt is None and old is not None and not ids.fresh
                           and (old.size, old.offset, old.block_size)
                           == (spec.size, spec.offset, block_size))
                written: list[tuple[int, int]] | None = None
                if source_key(spec.path) in listed:
                    written = listed[source_key(spec.path)] if trusted else None
                elif spec.name in eras:
                    written = _era_ranges(spec, eras[spec.name], previous) if trusted else None
                    trusted = written is not None
                only: list[Run] | None = None
                if written is not None:
                    only = merge_runs(block_runs(written, spec.offset, spec.size, block_size)
                                      + [(b, 1) for b in ids.find(damaged)])
                vol = _Volume(spec, geometry, ids, trusted,
                              bytes.fromhex(old.root) if trusted and old else fmt.ZERO_ID)
                volumes.append(vol)
                vol.scan = scan_volume(views[spec.name], geometry, ids, trusted=trusted,
                                       pool=pool, uploaded=stats, only=only,
                                       skip_free=opts.skip_free, fstype=spec.fstype,
                                       window=2 * workers,
                                       progress=progress)
                if last_of_source[spec.path] == i:
                    held.thaw(spec.path)  # its blocks are read: its writers may go on
            stats.add(pool.flush(sender))
            era_state = _era_state(eras)
            lap("blocks")
        except BaseException:
            for vol in volumes:
                vol.ids.close()
            raise
        try:
            records = [_index(remote, host, sender, vol) for vol in volumes]
            lap("index")
            full = any(not v.trusted for v in volumes)
            generation = _generation(remote, host, codec, previous, latest, full)
            manifest = Manifest(
                host=host, point_id=point_id, created=created, volumes=records, layout=layout,
                tracking={"mode": "list" if changed is not None else tracking,
                          "generation": generation, "full_scan": full},
                parent=latest.point_id if latest else None)
            scans = [v.scan for v in volumes if v.scan]
            request = CommitRequest(
                point_id=point_id, created=created, parent=manifest.parent,
                volumes=[VolumeWire(name=r.name, size=r.size, block_size=r.block_size,
                                    root=r.root, height=r.height) for r in records],
                manifest=base64.b64encode(manifest.seal(codec)).decode(),
                stats=PointStats(
                    changed_bytes=sum(s.changed_bytes for s in scans),
                    new_chunks=stats.new_chunks, new_bytes=stats.new_bytes,
                    scanned_bytes=sum(s.scanned_bytes for s in scans),
                    duration=time.monotonic() - started))
            info = _commit(remote, host, codec, sender, request, volumes, views, opts.retry)
        finally:
            for vol in volumes:
                vol.ids.close()
    state.point_id = info.point_id
    state.created = created
    state.generation = generation
    state.points_since_full = 0 if full else previous.points_since_full + 1
    state.volumes = {r.name: VolumeState(r.size, r.block_size, r.root, v.spec.offset)
                     for r, v in zip(records, volumes, strict=True)}
    state.era = era_state
    store.save(state)
    lap("commit")
    log.info("point %s committed: %d changed blocks, %d new chunks (%d bytes) in %.2f s (%s)",
             info.point_id, sum(s.changed_blocks for s in scans), stats.new_chunks,
             stats.new_bytes, time.monotonic() - started,
             ", ".join(f"{name} {secs:.2f} s" for name, secs in phases.items()))
    return info


def _checkpoint_eras(specs: list[VolumeSpec]) -> dict[str, tuple[era.EraDevice, int]]:
    """Per volume with a dm-era device: (device, era current before this checkpoint)."""
    out: dict[str, tuple[era.EraDevice, int]] = {}
    taken: dict[str, tuple[era.EraDevice, int]] = {}
    for spec in specs:
        dev = era.find_era(spec.path)
        if dev is None:
            log.warning("%s has no dm-era device: %s is scanned instead", spec.path, spec.name)
            continue
        # One checkpoint per device, shared by its volumes (a disk's boot area and
        # partitions): each further one would open an era the next point takes for a reset.
        if dev.name not in taken:
            taken[dev.name] = (dev, era.checkpoint(dev))
        out[spec.name] = taken[dev.name]
    return out


def _era_state(eras: dict[str, tuple[era.EraDevice, int]]) -> dict[str, dict[str, Any]]:
    """What the next point needs: the first era after this point's checkpoint (writes from
    then on are the next point's changes), and the device's era now, after our own
    messages (metadata snapshots open eras too). Any other era next time means the device
    was touched or reset."""
    return {name: {"device": dev.name, "since": cp + 1, "end": era.current_era(dev)}
            for name, (dev, cp) in eras.items()}


def _era_ranges(spec: VolumeSpec, entry: tuple[era.EraDevice, int], previous: HostState,
                ) -> list[tuple[int, int]] | None:
    """Byte ranges of the device written since the last point, or None when the era chain
    is in doubt."""
    dev, era_now = entry
    rec = previous.era.get(spec.name)
    if not rec or rec.get("device") != dev.name or rec.get("end") != era_now:
        log.info("full scan of %s: era tracking of %s was reset or is new", spec.name, dev.name)
        return None
    ranges = era.written_since(dev, int(rec["since"]))
    return era.to_byte_ranges(ranges, dev.block_sectors * era.SECTOR)


def _generation(remote: Remote, host: str, codec: BlobCodec, state: HostState,
                latest: PointInfo | None, full: bool) -> int:
    """The tracking generation of the new point: unchanged while the chain of incremental
    points holds, one more than the chain's last on a full scan (read from the server's
    latest manifest when the local state is lost or stale)."""
    if not full:
        return state.generation
    base = state.generation
    if latest is not None and latest.point_id != state.point_id:
        try:
            latest_manifest = open_point(remote, host, codec, latest.point_id)
        except (IntegrityError, FormatError) as exc:
            # Damaged on the server: it would stop this point and every later one (the
            # latest would stay that point). The generation is only a label.
            log.warning("the latest point's manifest is unreadable (%s); its tracking "
                        "generation is not known", exc)
        else:
            base = max(base, int(latest_manifest.tracking.get("generation", 0)))
    return base + 1


def _index(remote: Remote, host: str, sender: Sender, vol: _Volume) -> VolumeRecord:
    pages = PageUploader(sender)
    assert vol.scan is not None
    # Untrusted volumes start from the empty tree (old_root ZERO_ID): their changes are
    # relative to it, so a mostly-empty volume is patched rather than rebuilt. A patch
    # holds every leaf it touches (twice); past MAX_PATCHED_LEAVES the tree is built
    # again from the ID file, one page per level at a time: the same tree, bounded memory.
    changes = vol.scan.changes
    root = None
    if changes is not None and \
            len({block // fmt.PAGE_FANOUT for block in changes}) <= MAX_PATCHED_LEAVES:
        try:
            root = index.update(vol.geometry, remote.page_source(host), vol.old_root,
                                changes, pages)
        except (NotFoundError, IntegrityError) as exc:
            # A page of the previous tree lost or damaged on the server (verify marked
            # it): the agent's own IDs make the same tree, and the pages the server
            # lacks go up with it (the damaged one too, if this point still uses it).
            log.warning("%s: index of the previous point unreadable on the server (%s); "
                        "building it from the local IDs", vol.spec.name, exc)
    if root is None:
        root = index.build(vol.geometry, vol.ids.iter_ids(), pages)
    pages.flush()
    return VolumeRecord(name=vol.spec.name, size=vol.spec.size,
                        block_size=vol.geometry.block_size, root=root.hex(),
                        height=vol.geometry.height)


def _commit(remote: Remote, host: str, codec: BlobCodec, sender: Sender,
            request: CommitRequest, volumes: list[_Volume],
            views: dict[str, snapshot.ReadView], policy: RetryPolicy) -> PointInfo:
    """Commit, retrying with the same point ID (idempotent on the server). A 409 names
    objects the server lacks (lost, damaged or removed meanwhile): upload those from the
    views again, and commit again. It names only the topmost missing page of a subtree
    (the server does not read below one), so a subtree lost whole takes a round per
    level of the index, and one more for its chunks."""
    rounds = max((v.height for v in request.volumes), default=0) + 3
    for _ in range(rounds):
        try:
            return retrying(policy, "committing the point", lambda: remote.commit(host, request))
        except MissingObjectsError as exc:
            named = ({bytes.fromhex(h) for h in exc.missing.missing_chunks},
                     {bytes.fromhex(h) for h in exc.missing.missing_pages})
            log.warning("server lacks objects of the point; uploading them again")
            _reupload(codec, sender, volumes, views, named)
    raise ServerError(f"the server kept refusing the commit for missing objects after "
                      f"{rounds} rounds of sending them again", 409)


def _reupload(codec: BlobCodec, sender: Sender, volumes: list[_Volume],
              views: dict[str, snapshot.ReadView], named: tuple[set[bytes], set[bytes]]) -> None:
    """Send the named chunks again, read from the views, and the named pages. A view that
    is no longer point-in-time (a thawed device, a plain image file) may have moved on: a
    block is sent only if it still matches its chunk ID, and a chunk none of whose blocks
    does fails the point (ServerError 409)."""
    chunks, wanted_pages = named
    resent: set[bytes] = set()
    changed_on: dict[bytes, str] = {}  # chunk ID -> a source where its block changed
    for vol in volumes:
        view = views[vol.spec.name]
        bs = vol.geometry.block_size
        items: dict[bytes, bytes] = {}
        with open(view.path, "rb") as f:
            for block in vol.ids.find(chunks):
                chunk_id = vol.ids.get(block)
                if chunk_id in items or chunk_id in resent:
                    continue  # one good copy is enough
                f.seek(view.offset + block * bs)
                data = f.read(vol.geometry.block_length(block))
                if codec.keys.chunk_id(data) == chunk_id:
                    items[chunk_id] = codec.seal(fmt.BLOB_KIND_CHUNK, chunk_id, data)
                else:
                    changed_on.setdefault(chunk_id, vol.spec.path)
        view.check()
        sender.send(ObjectKind.chunks, list(items.items()))
        resent.update(items)
        pages = PageUploader(sender, only=wanted_pages)
        index.build(vol.geometry, vol.ids.iter_ids(), pages)
        pages.flush()
    lost = {chunk: path for chunk, path in changed_on.items() if chunk not in resent}
    if lost:
        raise ServerError(
            f"the server lacks {len(lost)} chunks of this point whose blocks changed on "
            f"{', '.join(sorted(set(lost.values())))} since the point read them; the point "
            "is not committed, and the next one reads its volumes in full and sends what "
            "the server lacks", 409)
