"""The datastore: an object store and a catalog, and the object operations of the API
(missing, upload, fetch). Objects of one upload request go into one immutable pack: one
fsync per request instead of one per 16 KiB chunk."""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cdpcore import format as fmt
from cdpcore import index, records
from cdpcore.api import MAX_FETCH_BYTES, ObjectKind, Role, UploadResult
from cdpcore.errors import FormatError, IntegrityError, NotFoundError, UsageError
from cdpcore.manifest import check_name

from .catalog import Catalog, Location
from .errors import BadRequest, DatastoreBusy
from .sqlite_catalog import SqliteCatalog
from .store import LocalStore, ObjectStore, new_pack_name

log = logging.getLogger("cdp.server")

CATALOG_FILE = "catalog.sqlite"
OBJECTS_DIR = "objects"
LOCK_FILE = "commit.lock"
SERVE_LOCK_FILE = "serve.lock"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class RecoveryReport:
    pending_packs: int
    orphan_objects: int
    temp_files: int


class Datastore:
    def __init__(self, store: ObjectStore, catalog: Catalog, lock_path: Path) -> None:
        self.store = store
        self.catalog = catalog
        self._lock = threading.Lock()
        self._lock_path = lock_path

    @classmethod
    def open(cls, root: Path) -> Datastore:
        if not (root / CATALOG_FILE).is_file():
            raise UsageError(f"{root} is not a CDP datastore: run `cdp-server init --data "
                             f"{root}` first")
        return cls(LocalStore(root / OBJECTS_DIR), SqliteCatalog(root / CATALOG_FILE),
                   root / LOCK_FILE)

    @classmethod
    def init(cls, root: Path) -> tuple[Datastore, str]:
        """Create a datastore; returns it and a new admin token (stored hashed)."""
        if (root / CATALOG_FILE).exists():
            raise UsageError(f"{root} already holds a CDP datastore")
        root.mkdir(parents=True, exist_ok=True)
        ds = cls(LocalStore(root / OBJECTS_DIR), SqliteCatalog(root / CATALOG_FILE),
                 root / LOCK_FILE)
        token = new_token()
        ds.catalog.add_token(hash_token(token), Role.admin, None)
        return ds, token

    @contextmanager
    def commit_lock(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Commits and garbage collection exclude each other, also across processes (the
        server and a `cdp-server gc` run): a commit's walk skips subtrees marked complete,
        which must not be swept under its feet. `on_wait` is called if the lock is held
        elsewhere, before waiting for it."""
        with self._lock:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if on_wait is not None:
                        on_wait()
                    fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Held by the one server process of the datastore, from before its start-up
        recovery until it exits. A second server would take the first one's packs in the
        making (pending, and uploads do not take the commit lock) for a crash's leftovers
        and delete them, and their objects with them."""
        path = self._lock_path.with_name(SERVE_LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DatastoreBusy(
                    f"another `cdp-server serve` serves {path.parent} (it holds {path}): "
                    "one server per datastore; stop it first") from None
            yield
        finally:
            os.close(fd)

    def add_host(self, name: str) -> dict[Role, str]:
        """Enrol a host; returns its new agent and restore tokens (stored hashed)."""
        check_name("host", name)
        if "/" in name:
            raise FormatError(f"invalid host name {name!r}: '/' cannot appear in a URL path")
        tokens: dict[Role, str] = {role: new_token() for role in (Role.agent, Role.restore)}
        self.catalog.create_host(name, {r: hash_token(t) for r, t in tokens.items()})
        return tokens

    def reissue_token(self, host: str | None, role: Role) -> tuple[str, int]:
        """A new token of `role` for `host` (None with Role.admin: an admin token), which
        replaces every other of that host and role at once: for a token lost, leaked, or
        left on a machine that is gone. Returns the token and how many were revoked."""
        if (host is None) != (role is Role.admin):
            raise UsageError("admin tokens belong to no host; agent and restore tokens "
                             "belong to one")
        if host is not None and not self.catalog.host_exists(host):
            raise NotFoundError(f"no host {host!r}")
        token = new_token()
        return token, self.catalog.replace_tokens(host, role, hash_token(token))

    def remove_host(self, name: str) -> int:
        """Decommission host `name`: its tokens stop working, its points, key and
        retention rules are deleted, and the next gc (past its grace period) frees its
        objects; the name can be enrolled again. Under the commit lock, so that no commit
        of the host lands after it. Returns how many points were deleted."""
        if not self.catalog.host_exists(name) or self.catalog.host_retired(name):
            raise NotFoundError(f"no host {name!r}")
        with self.commit_lock():
            return self.catalog.retire_host(name)

    def recover(self) -> RecoveryReport:
        """At start-up, before serving: remove what a crash left half-done (pending packs,
        pack files the catalog does not know or has retired, temp files). Nothing of it was visible.
        Under the commit lock: a `cdp-server gc` running meanwhile writes packs (pending,
        then done) that are neither half-done nor orphans; recovery waits for it."""
        def waiting() -> None:
            log.warning("waiting for a running `cdp-server gc` (it holds %s) before "
                        "start-up recovery", self._lock_path)

        with self.commit_lock(on_wait=waiting):
            return self._recover()

    def _recover(self) -> RecoveryReport:
        packs = self.catalog.packs()
        pending = [p.name for p in packs if p.state == "pending"]
        for name in pending:
            self.store.delete(name)
        self.catalog.forget_pending(pending)
        # A retired pack's file is an orphan too: a gc stopped before it deleted the file.
        needed = {p.name for p in packs if p.state != "retired"}
        orphans = [name for name in self.store.list() if name not in needed]
        for name in orphans:
            self.store.delete(name)
        for pack in packs:
            if pack.state == "retired":
                self.catalog.forget_retired(pack.name)
        temps = self.store.clean_tmp() if isinstance(self.store, LocalStore) else 0
        return RecoveryReport(len(pending), len(orphans), temps)

    # --- objects

    def missing(self, host: str, kind: ObjectKind, ids: list[bytes]) -> list[bytes]:
        present = self.catalog.present(host, kind, ids)
        if self.catalog.touch(host, kind, list(present), time.time()) < len(present):
            # gc deleted some between the lookup and the refresh: those are to be sent.
            # Once refreshed, an object is in grace, so this second look is final.
            present = self.catalog.present(host, kind, present)
        return [i for i in dict.fromkeys(ids) if i not in present]

    def upload(self, host: str, kind: ObjectKind, body: bytes,
               form: records.RecordFormat = records.CURRENT) -> UploadResult:
        """Store the objects of one record stream (`form`: its version, from the media
        type) in one pack. Each keeps the checksum its record carried."""
        items: dict[bytes, tuple[bytes, memoryview]] = {}
        try:
            for oid, checksum, blob in records.decode_record_views(body, form):
                if oid == fmt.ZERO_ID:
                    raise BadRequest("the all-zero ID names an all-zero block or page, "
                                     "which is never stored")
                if kind is ObjectKind.pages:
                    index.decode_page(bytes(blob), oid)
                items[oid] = (checksum, blob)
        except IntegrityError as exc:
            raise BadRequest(str(exc), 422) from None
        except FormatError as exc:
            raise BadRequest(str(exc)) from None
        if not items:
            return UploadResult(stored=0, duplicates=0, stored_bytes=0)
        # Damaged objects count as absent: their new copy replaces them (healing).
        present = self.catalog.present(host, kind, items)
        new = [oid for oid in items if oid not in present]
        touched = [o for o in items if o in present]
        stored, size, gone = self._store(host, kind, items, new, touched)
        if gone:
            # gc deleted these between the lookup and their refresh: the answer would call
            # them duplicates, and the agent would not send them again. Their bytes are in
            # this request: store them now, as new objects. This round touches nothing,
            # so gc can take nothing from under it: it is final.
            more, more_size, _ = self._store(host, kind, items, gone, [])
            stored, size = stored + more, size + more_size
        # stored_bytes is the size of the packs written. In the rare race where a
        # concurrent upload of the same host stored some of these objects first, their
        # copies here are referenced by no row (GC rewrites or deletes such packs).
        return UploadResult(stored=stored, duplicates=len(items) - stored, stored_bytes=size)

    def _store(self, host: str, kind: ObjectKind,
               items: dict[bytes, tuple[bytes, memoryview]], new: list[bytes],
               touched: list[bytes]) -> tuple[int, int, list[bytes]]:
        """Write the `new` objects of `items` in one pack and make them visible, refreshing
        the `touched` ones (found present) in the same transaction. Returns how many
        became visible, the pack's size, and those of `touched` that were gone."""
        if not new:
            if self.catalog.touch(host, kind, touched, time.time()) == len(touched):
                return 0, 0, []
            # Refreshed objects are in grace now, so this second look is final.
            again = self.catalog.present(host, kind, touched)
            return 0, 0, [o for o in touched if o not in again]
        pack, rows, parts, offset = new_pack_name(), [], [], 0
        for oid in new:
            checksum, blob = items[oid]
            rows.append((oid, offset, len(blob), checksum))
            parts.append(blob)
            offset += len(blob)
        self.catalog.begin_pack(pack, offset)
        try:
            self.store.put(pack, parts)
            stored, gone = self.catalog.add_objects(host, kind, pack, rows, time.time(),
                                                    touched)
        except BaseException:
            self._abandon(pack)
            raise
        return stored, offset, gone

    def _abandon(self, pack: str) -> None:
        """Undo a failed upload's pack: its row, then its file, unless gc forgot the row
        first (then gc deletes the file). If even that fails (a full disk can refuse the
        catalog write too), recovery at the next start or GC removes it."""
        try:
            if self.catalog.forget_pending([pack]):
                self.store.delete(pack)
        except Exception:
            log.warning("could not remove abandoned pack", extra={"pack": pack},
                        exc_info=True)

    def read_object(self, oid: bytes, loc: Location) -> bytes:
        """The object's bytes, checked against the stored checksum (IntegrityError)."""
        return _checked(oid, loc, self.store.get_ranges(loc.pack, [(loc.offset, loc.length)])[0])

    def read_current(self, host: str, kind: ObjectKind, oid: bytes, loc: Location) -> bytes:
        """read_object, but if it fails, look the object up again once: GC may have moved
        it to a new pack since `loc` was read. Only a second failure is damage."""
        try:
            return self.read_object(oid, loc)
        except (IntegrityError, NotFoundError):
            again = self.catalog.locate(host, kind, [oid]).get(oid)
            if again is None or again == loc:
                raise
            return self.read_object(oid, again)

    def fetch(self, host: str, kind: ObjectKind, ids: list[bytes]
              ) -> list[tuple[bytes, bytes, bytes]]:
        """(id, blob, its stored checksum, checked) of each object; NotFoundError naming absent or
        damaged ones. An object found corrupted here is marked damaged so the next backup
        heals it."""
        locs = self.catalog.locate(host, kind, ids)
        total = sum(loc.length for loc in locs.values())
        if total > MAX_FETCH_BYTES and len(ids) > 1:
            raise BadRequest(f"the {len(ids)} {kind.value} asked for hold {total} bytes, more "
                             f"than one answer carries ({MAX_FETCH_BYTES}): ask for fewer", 413)
        absent = [i for i in ids if i not in locs or locs[i].damaged]
        out: list[tuple[bytes, bytes, bytes]] = []
        corrupted: list[bytes] = []
        # Pack order, then offset order: sequential reads, each pack opened once.
        order = sorted(dict.fromkeys(i for i in ids if i not in absent),
                       key=lambda i: (locs[i].pack, locs[i].offset))
        for pack, group in itertools.groupby(order, key=lambda i: locs[i].pack):
            members = list(group)
            try:
                blobs = self.store.get_ranges(
                    pack, [(locs[i].offset, locs[i].length) for i in members])
            except (NotFoundError, IntegrityError):
                # GC may have moved them (read_current looks again), or the pack cannot
                # be read: each is then found damaged on its own.
                blobs = [b""] * len(members)
            for oid, blob in zip(members, blobs, strict=True):
                loc = locs[oid]
                try:
                    try:
                        blob = _checked(oid, loc, blob)
                    except IntegrityError:
                        blob = self.read_current(host, kind, oid, loc)
                    # Checked against its stored checksum (which a GC move keeps): the
                    # answer reuses it where it is of the answer's record version.
                    out.append((oid, blob, loc.checksum))
                except (IntegrityError, NotFoundError):
                    corrupted.append(oid)
        if corrupted:  # only the copies read: an upload may have healed one meanwhile
            self.catalog.mark_damaged(host, kind, corrupted, found=locs)
        if absent or corrupted:
            # Those marked damaged (by verify or an earlier read) are damaged, not missing.
            lost = [i for i in absent if i not in locs]
            damaged = [i for i in absent if i in locs] + corrupted
            names = ", ".join(i.hex() for i in (lost + damaged)[:20])
            raise NotFoundError(f"{len(lost)} {kind.value} missing and {len(damaged)} "
                                f"damaged on host {host!r}: {names}")
        return out


def _checked(oid: bytes, loc: Location, blob: bytes) -> bytes:
    if len(blob) != loc.length or not records.checksum_matches(blob, loc.checksum):
        raise IntegrityError(f"stored object {oid.hex()[:16]}… is corrupted")
    return blob
