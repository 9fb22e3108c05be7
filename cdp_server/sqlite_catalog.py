"""The SQLite catalog (cdp_server.catalog.Catalog).

SQLite in WAL mode with synchronous=FULL: a committed transaction survives kill -9 and
power loss. One connection per thread; writers are serialised by a lock (SQLite allows
one writer anyway, and waiting on a Python lock beats spinning on SQLITE_BUSY).

Since schema version 2 (`PRAGMA user_version`), object rows name their host, kind and pack
by small integers and live in a rowid table, appended in upload order; only the unique
index on (host, kind, id) takes random inserts. Version 1 keyed a WITHOUT ROWID table by
(host name, kind name, id) and repeated the pack's name in every row: 298 bytes of table
and indexes per object against 154, and each insert landed on a random page of the whole
table (docs/FORMAT.md, "Server datastore"; bench/catalog.py). Version 3 renamed
`objects.sha256` to `checksum`: it holds a CRC-32 (4 bytes) for objects uploaded in v2
records, a SHA-256 (32) for those uploaded in v1 (cdpcore.records). Older catalogs are
migrated when the server opens them."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cdpcore.api import ObjectKind, Retention, Role
from cdpcore.errors import NotFoundError, ServerError, UsageError

from .catalog import Location, PackRow, PointRow, point_head
from .errors import Conflict, StorageFull

log = logging.getLogger("cdp.server")

#: The catalog's schema version (`PRAGMA user_version`; 0 is version 1, which predates it).
CATALOG_VERSION = 3
#: Object kinds as stored in `objects.kind`.
KIND_CODE = {ObjectKind.chunks: 0, ObjectKind.pages: 1}
_KIND_OF_CODE = {code: kind for kind, code in KIND_CODE.items()}
_CHUNKS, _PAGES = KIND_CODE[ObjectKind.chunks], KIND_CODE[ObjectKind.pages]

_POINTS_TABLE = """
CREATE TABLE IF NOT EXISTS points(
    host TEXT NOT NULL, point_id TEXT NOT NULL, created REAL NOT NULL,
    committed REAL NOT NULL, parent TEXT, size INTEGER NOT NULL, stats TEXT NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0, verify TEXT NOT NULL DEFAULT 'unverified',
    volumes TEXT NOT NULL, manifest TEXT NOT NULL, digest TEXT NOT NULL,
    head TEXT NOT NULL,
    doc TEXT,  -- the whole PointInfo JSON, kept by the triggers below
    -- 1, 2, ... per host in commit order, whatever the server's clock said (retention)
    arrival INTEGER,
    -- CRC-32 of volumes and manifest (`_record_crc`): verify finds them changed
    record_crc INTEGER,
    PRIMARY KEY(host, point_id))"""
# `hid` and `pid` are explicit INTEGER PRIMARY KEYs: VACUUM may renumber implicit rowids,
# and object rows refer to these.
_HOSTS_TABLE = """
CREATE TABLE IF NOT EXISTS {name}(
    hid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL, key TEXT,
    retention TEXT,
    -- bumped by every change to the host's points (triggers below): keys listing caches
    points_gen INTEGER NOT NULL DEFAULT 0)"""
# A pack is registered 'pending' before its file is written and becomes 'done' in the
# transaction that adds its objects: a crash leaves a pending row, never an unknown file.
_PACKS_TABLE = """
CREATE TABLE IF NOT EXISTS {name}(
    pid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
    created REAL NOT NULL, size INTEGER NOT NULL)"""
# A rowid table: rows are appended in upload order, so a pack's rows share pages.
_OBJECTS_TABLE = """
CREATE TABLE IF NOT EXISTS {name}(
    host INTEGER NOT NULL, kind INTEGER NOT NULL, id BLOB NOT NULL, pack INTEGER NOT NULL,
    offset INTEGER NOT NULL, length INTEGER NOT NULL, checksum BLOB NOT NULL,
    seen REAL NOT NULL, damaged INTEGER NOT NULL DEFAULT 0,
    -- pages only: the whole subtree below was present when a commit walked it
    complete INTEGER NOT NULL DEFAULT 0)"""
_SCHEMA = (
    _HOSTS_TABLE.format(name="hosts"),
    "CREATE TABLE IF NOT EXISTS tokens(hash TEXT PRIMARY KEY, role TEXT NOT NULL, host TEXT)",
    _PACKS_TABLE.format(name="packs"),
    _OBJECTS_TABLE.format(name="objects"),
    # The one index with random inserts, and the one a "missing" query reads alone.
    "CREATE UNIQUE INDEX IF NOT EXISTS objects_id ON objects(host, kind, id)",
    "CREATE INDEX IF NOT EXISTS objects_pack ON objects(pack)",
    # Only the damaged objects: every point asks for its host's damaged chunks, and
    # without it that is a scan of all the host's objects (0.27 s cold for 74,000; it
    # grows with the host, a 1 TiB volume has up to 64 million).
    "CREATE INDEX IF NOT EXISTS objects_damaged ON objects(host, kind, id) WHERE damaged",
    _POINTS_TABLE,
    # data repairs already made (`_repair_once`)
    "CREATE TABLE IF NOT EXISTS repairs(name TEXT PRIMARY KEY, done REAL NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS points_ins AFTER INSERT ON points BEGIN "
    "UPDATE hosts SET points_gen = points_gen + 1 WHERE name = NEW.host; END",
    "CREATE TRIGGER IF NOT EXISTS points_upd AFTER UPDATE ON points BEGIN "
    "UPDATE hosts SET points_gen = points_gen + 1 WHERE name = NEW.host; END",
    "CREATE TRIGGER IF NOT EXISTS points_del AFTER DELETE ON points BEGIN "
    "UPDATE hosts SET points_gen = points_gen + 1 WHERE name = OLD.host; END",
)
#: Hosts whose full point listing is kept rendered (about 28 MB per 100,000 points).
LIST_CACHE_HOSTS = 8

# A point's JSON (PointInfo) is its immutable head, rendered once at commit, plus the two
# fields that change. The triggers keep the result in `doc`, so a listing only joins
# ready strings (about half the time of concatenating per row while listing).
_POINT_JSON = ("head || ',\"pinned\":' || CASE WHEN pinned THEN 'true' ELSE 'false' END "
               "|| ',\"verify\":\"' || verify || '\"}'")
# Created after the `doc` column is added to a catalog that predates it.
# The listing index covers `doc`: a listing reads the index alone, in order, without a
# table lookup per point (about half the time); it serves the time filters and
# host_summary too, so it replaces the older index on (host, created, point_id).
_DOC_SCHEMA = (
    "DROP INDEX IF EXISTS points_created",
    "CREATE INDEX IF NOT EXISTS points_listing ON points(host, created, point_id, doc)",
    "CREATE TRIGGER IF NOT EXISTS points_doc_ins AFTER INSERT ON points BEGIN "
    f"UPDATE points SET doc = {_POINT_JSON} "
    "WHERE host = NEW.host AND point_id = NEW.point_id; END",
    "CREATE TRIGGER IF NOT EXISTS points_doc_upd AFTER UPDATE OF pinned, verify ON points "
    f"BEGIN UPDATE points SET doc = {_POINT_JSON} "
    "WHERE host = NEW.host AND point_id = NEW.point_id; END",
)


def _repair_once(db: sqlite3.Connection, name: str,
                 repair: Callable[[sqlite3.Connection], None]) -> None:
    """Run a data repair the first time this catalog is opened by a server that knows it,
    in the opening transaction. Recorded in the `repairs` table rather than by a new
    version: a repair changes no schema, and an older server may still open the catalog."""
    if not db.execute("SELECT 1 FROM repairs WHERE name = ?", (name,)).fetchone():
        repair(db)
        db.execute("INSERT INTO repairs VALUES (?, ?)", (name, time.time()))


def _repair_durations(db: sqlite3.Connection) -> None:
    """Servers before PointStats checked `duration` stored a NaN or infinite one as null,
    and a negative one as sent: every client refuses such a point, and with it the host's
    whole listing. The duration only informs, so such points get 0."""
    rows = db.execute(
        "SELECT host, point_id, created, committed, parent, size, stats FROM points "
        "WHERE json_type(stats, '$.duration') NOT IN ('integer', 'real') "
        "OR json_extract(stats, '$.duration') < 0").fetchall()
    for host, point_id, created, committed, parent, size, stats in rows:
        fixed = json.dumps({**json.loads(stats), "duration": 0.0}, separators=(",", ":"))
        head = point_head(host, point_id, created, committed, parent, size, fixed)
        db.execute("UPDATE points SET stats = ?, head = ? WHERE host = ? AND point_id = ?",
                   (fixed, head, host, point_id))
        db.execute(f"UPDATE points SET doc = {_POINT_JSON} WHERE host = ? AND point_id = ?",
                   (host, point_id))
        log.warning("point %s of %s had no valid duration (%s); it is now 0", point_id,
                    host, json.loads(stats).get("duration"))


def _number_arrivals(db: sqlite3.Connection) -> None:
    """Give points without an arrival number one, after the host's numbered points, in
    the order of their commit times: every point of a catalog made before the column
    existed, and the points an older server committed into one since (it leaves the
    column empty)."""
    rows = db.execute("SELECT host, point_id FROM points WHERE arrival IS NULL "
                      "ORDER BY host, committed, rowid").fetchall()
    last: dict[str, int] = {}
    for host, point_id in rows:
        if host not in last:
            (last[host],) = db.execute("SELECT coalesce(max(arrival), 0) FROM points "
                                       "WHERE host = ?", (host,)).fetchone()
        last[host] += 1
        db.execute("UPDATE points SET arrival = ? WHERE host = ? AND point_id = ?",
                   (last[host], host, point_id))


class SqliteCatalog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._list_cache: dict[str, tuple[int, bytes]] = {}
        self._cache_lock = threading.Lock()
        #: host name -> hid; hosts are never deleted or renamed, so this never goes stale
        self._hids: dict[str, int] = {}
        if self._open_schema():
            # The old tables' pages are free now but still in the file (the new tables
            # were written beside them): give the space back, once, and then the WAL's,
            # which held the migration and the VACUUM (1.3 times the old catalog).
            log.info("catalog %s migrated to version %d; compacting it", path,
                     CATALOG_VERSION)
            with self._write_lock:
                self._db().execute("VACUUM")
                self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _open_schema(self) -> bool:
        """Create the schema, or bring an older catalog up to date: one transaction, so a
        kill during a migration leaves the old catalog as it was. True if it migrated."""
        migrated = False
        with self.write() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > CATALOG_VERSION:
                raise UsageError(f"{self.path} is a catalog of version {version}, newer than "
                                 f"this server's {CATALOG_VERSION}: upgrade cdp-server")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master "
                                               "WHERE type = 'table'")}
            if version < 2 and "objects" in tables:
                _migrate_v1(db)
                migrated = True
            elif version == 2:
                # The column holds CRC-32s too now (v2 records): only its name changes.
                db.execute("ALTER TABLE objects RENAME COLUMN sha256 TO checksum")
            for statement in _SCHEMA:
                db.execute(statement)
            # Catalogs made before `doc` existed get it, filled.
            if "doc" not in {r[1] for r in db.execute("PRAGMA table_info(points)")}:
                db.execute("ALTER TABLE points ADD COLUMN doc TEXT")
                db.execute(f"UPDATE points SET doc = {_POINT_JSON}")
            for statement in _DOC_SCHEMA:
                db.execute(statement)
            if "arrival" not in {r[1] for r in db.execute("PRAGMA table_info(points)")}:
                db.execute("ALTER TABLE points ADD COLUMN arrival INTEGER")
            _number_arrivals(db)
            db.execute("CREATE INDEX IF NOT EXISTS points_arrival ON points(host, arrival)")
            if "record_crc" not in {r[1] for r in db.execute("PRAGMA table_info(points)")}:
                # Older points get the checksum of their record as it is now.
                db.execute("ALTER TABLE points ADD COLUMN record_crc INTEGER")
                db.executemany("UPDATE points SET record_crc = ? WHERE rowid = ?", [
                    (_record_crc(volumes, manifest), rowid) for rowid, volumes, manifest in
                    db.execute("SELECT rowid, volumes, manifest FROM points").fetchall()])
            _repair_once(db, "durations", _repair_durations)
            db.execute(f"PRAGMA user_version = {CATALOG_VERSION}")
        return migrated

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=60,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is visible, or none of it.

        durable=False commits without an fsync (synchronous=NORMAL for this transaction):
        visible to every connection at once and kept through a crash of this process (the
        kernel holds the WAL pages), but a power loss or kernel crash may lose it until
        the next durable commit, whose WAL fsync also covers it (the WAL is appended in
        order). Only for rows whose loss is harmless."""
        db = self._db()
        with self._write_lock:
            try:
                if not durable:
                    db.execute("PRAGMA synchronous=NORMAL")
                try:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        yield db
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                    db.execute("COMMIT")
                finally:
                    if not durable:
                        db.execute("PRAGMA synchronous=FULL")
            except sqlite3.OperationalError as exc:
                if "full" in str(exc):
                    raise StorageFull(f"the catalog's disk is full: {exc}") from None
                raise

    def read(self) -> sqlite3.Connection:
        return self._db()

    # --- hosts and tokens

    def add_token(self, token_hash: str, role: Role, host: str | None) -> None:
        with self.write() as db:
            db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (token_hash, role.value, host))

    def create_host(self, name: str, token_hashes: dict[Role, str]) -> None:
        """Enrol `name`, or revive it if it was removed (its old objects are gc's)."""
        with self.write() as db:
            if db.execute("SELECT 1 FROM hosts WHERE name = ?", (name,)).fetchone():
                if db.execute("SELECT 1 FROM tokens WHERE host = ?", (name,)).fetchone():
                    raise Conflict(f"host {name!r} already exists")
                # Revived afresh: nothing stored for the removed host carries over (a
                # key or rules that reached it after its removal).
                db.execute("UPDATE hosts SET key = NULL, retention = NULL WHERE name = ?",
                           (name,))
            else:
                db.execute("INSERT INTO hosts(name, created) VALUES (?, ?)",
                           (name, time.time()))
            db.executemany("INSERT INTO tokens VALUES (?, ?, ?)",
                           [(h, role.value, name) for role, h in token_hashes.items()])

    def token(self, token_hash: str) -> tuple[Role, str | None] | None:
        row = self.read().execute("SELECT role, host FROM tokens WHERE hash = ?",
                                  (token_hash,)).fetchone()
        return None if row is None else (Role(row[0]), row[1])

    def replace_tokens(self, host: str | None, role: Role, token_hash: str) -> int:
        with self.write() as db:
            # In the transaction: a removal between a check and the insert would leave a
            # removed host with one live token.
            if host is not None and db.execute("SELECT 1 FROM tokens WHERE host = ? LIMIT 1",
                                               (host,)).fetchone() is None:
                raise NotFoundError(f"host {host!r} was removed: enrol it again with "
                                    "`cdp-server host add`")
            revoked = db.execute("DELETE FROM tokens WHERE role = ? AND host IS ?",
                                 (role.value, host)).rowcount
            db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (token_hash, role.value, host))
        return int(revoked)

    def retire_host(self, name: str) -> int:
        with self.write() as db:
            db.execute("DELETE FROM tokens WHERE host = ?", (name,))
            deleted = db.execute("DELETE FROM points WHERE host = ?", (name,)).rowcount
            db.execute("UPDATE hosts SET key = NULL, retention = NULL WHERE name = ?",
                       (name,))
        return int(deleted)

    def host_retired(self, name: str) -> bool:
        return self.read().execute("SELECT 1 FROM tokens WHERE host = ? LIMIT 1",
                                   (name,)).fetchone() is None

    def host_exists(self, name: str) -> bool:
        return self.read().execute("SELECT 1 FROM hosts WHERE name = ?",
                                   (name,)).fetchone() is not None

    def integrity_problems(self) -> list[str]:
        try:
            rows = [r[0] for r in self.read().execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        return [] if rows == ["ok"] else rows

    def host_names(self) -> list[str]:
        return [r[0] for r in self.read().execute("SELECT name FROM hosts ORDER BY name")]

    def host_summary(self, name: str) -> tuple[int, float | None, bool]:
        """(points, newest point's created time, has a key)."""
        db = self.read()
        count, latest = db.execute("SELECT count(*), max(created) FROM points WHERE host = ?",
                                   (name,)).fetchone()
        key = db.execute("SELECT key IS NOT NULL FROM hosts WHERE name = ?",
                         (name,)).fetchone()
        return int(count), latest, bool(key and key[0])

    def get_key(self, host: str) -> str | None:
        row = self.read().execute("SELECT key FROM hosts WHERE name = ?", (host,)).fetchone()
        return None if row is None else row[0]

    def put_key(self, host: str, key: str) -> bool:
        """True if stored now, False if the same key was there; Conflict if another one is."""
        with self.write() as db:
            (old,) = db.execute("SELECT key FROM hosts WHERE name = ?", (host,)).fetchone()
            if old is None:
                db.execute("UPDATE hosts SET key = ? WHERE name = ?", (key, host))
                return True
        if json.loads(old) != json.loads(key):
            raise Conflict(f"host {host!r} already has a different key; keys are never "
                           "overwritten")
        return False

    def retention(self, host: str) -> Retention:
        row = self.read().execute("SELECT retention FROM hosts WHERE name = ?",
                                  (host,)).fetchone()
        return Retention.model_validate_json(row[0]) if row and row[0] else Retention()

    def set_retention(self, host: str, retention: Retention) -> None:
        with self.write() as db:
            db.execute("UPDATE hosts SET retention = ? WHERE name = ?",
                       (retention.model_dump_json(), host))

    # --- objects

    def _hid(self, host: str) -> int | None:
        hid = self._hids.get(host)
        if hid is None:
            row = self.read().execute("SELECT hid FROM hosts WHERE name = ?",
                                      (host,)).fetchone()
            if row is None:
                return None
            hid = self._hids[host] = row[0]
        return hid

    def _known_hid(self, host: str) -> int:
        hid = self._hid(host)
        if hid is None:
            raise UsageError(f"no host {host!r} in the catalog")
        return hid

    def locate(self, host: str, kind: ObjectKind, ids: Iterable[bytes],
               ) -> dict[bytes, Location]:
        out: dict[bytes, Location] = {}
        hid = self._hid(host)
        if hid is None:
            return out
        db = self.read()
        for part in _chunks(list(ids), 900):
            marks = ",".join("?" * len(part))
            for row in db.execute(
                    "SELECT o.id, p.name, o.offset, o.length, o.checksum, o.damaged, o.complete "
                    "FROM objects AS o JOIN packs AS p ON p.pid = o.pack "
                    f"WHERE o.host = ? AND o.kind = ? AND o.id IN ({marks})",
                    (hid, KIND_CODE[kind], *part)):
                out[row[0]] = Location(row[1], row[2], row[3], row[4], bool(row[5]),
                                       bool(row[6]))
        return out

    def present(self, host: str, kind: ObjectKind, ids: Iterable[bytes]) -> set[bytes]:
        """Which of `ids` the catalog holds intact: read from the ID index alone and the
        small index of damaged objects, never from the rows (a "missing" query).

        Each part is counted first, and its IDs listed only when some but not all are
        there: the usual answers are "all" (a commit's walk, a retried upload) and "none"
        (new chunks), and a count does not turn tens of thousands of found rows into
        Python objects (the 73,648 IDs of a 2 GiB full point's walk: 0.20 s -> 0.11 s).
        Damaged objects are subtracted only if the host has any."""
        hid = self._hid(host)
        if hid is None:
            return set()
        db, code = self.read(), KIND_CODE[kind]
        found: set[bytes] = set()
        for part in _chunks(list(dict.fromkeys(ids)), 900):
            marks = ",".join("?" * len(part))
            where = f"WHERE host = ? AND kind = ? AND id IN ({marks})"
            (count,) = db.execute(f"SELECT count(*) FROM objects INDEXED BY objects_id {where}",
                                  (hid, code, *part)).fetchone()
            if count == len(part):
                found.update(part)
            elif count:
                found.update(r[0] for r in db.execute(
                    f"SELECT id FROM objects INDEXED BY objects_id {where}", (hid, code, *part)))
        if found and db.execute("SELECT 1 FROM objects INDEXED BY objects_damaged WHERE "
                                "host = ? AND kind = ? AND damaged LIMIT 1",
                                (hid, code)).fetchone():
            for part in _chunks(list(found), 900):
                marks = ",".join("?" * len(part))
                found.difference_update(r[0] for r in db.execute(
                    "SELECT id FROM objects INDEXED BY objects_damaged "
                    f"WHERE host = ? AND kind = ? AND damaged AND id IN ({marks})",
                    (hid, code, *part)))
        return found

    def touch(self, host: str, kind: ObjectKind, ids: list[bytes], now: float) -> int:
        """Refresh "last seen": GC's grace period then protects these objects. Returns how
        many rows it refreshed (fewer than `ids`: some were gone)."""
        if not ids:
            return 0
        hid, code = self._known_hid(host), KIND_CODE[kind]
        with self.write() as db:
            return max(db.executemany(
                "UPDATE objects SET seen = ? WHERE host = ? AND kind = ? AND id = ?",
                [(now, hid, code, i) for i in ids]).rowcount, 0)

    def begin_pack(self, name: str, size: int) -> None:
        # Not fsynced (one fsync less per upload): the row tells GC and recovery that the
        # file belongs to an upload in progress, and that holds as soon as it commits. If
        # a power loss takes the row, the pack file it announced is unknown to the catalog
        # and recovery deletes it at the next start, as it does any orphan; the durable
        # add_objects commit persists the row together with its own.
        with self.write(durable=False) as db:
            db.execute("INSERT INTO packs(name, state, created, size) "
                       "VALUES (?, 'pending', ?, ?)", (name, time.time(), size))

    def add_objects(self, host: str, kind: ObjectKind, pack: str,
                    rows: list[tuple[bytes, int, int, bytes]], now: float,
                    touched: Sequence[bytes] = ()) -> tuple[int, list[bytes]]:
        """Make a written pack's objects visible: rows are (id, offset, length, checksum).
        An object already present and intact is not replaced (a concurrent upload won);
        a damaged one is (healing). `touched` objects (already present) get "last seen"
        refreshed in the same transaction: one commit, one fsync. Returns how many
        became visible, and those of `touched` that were gone (a gc sweep deleted them
        after the caller looked them up: the caller must store them)."""
        hid, code = self._known_hid(host), KIND_CODE[kind]
        with self.write() as db:
            pid = _registered_pack(db, pack)
            refreshed = db.executemany(
                "UPDATE objects SET seen = ? WHERE host = ? AND kind = ? AND id = ?",
                [(now, hid, code, i) for i in touched]).rowcount
            gone = [] if max(refreshed, 0) == len(touched) else [
                i for i in touched if db.execute(
                    "SELECT 1 FROM objects WHERE host = ? AND kind = ? AND id = ?",
                    (hid, code, i)).fetchone() is None]
            cur = db.executemany(
                "INSERT INTO objects(host, kind, id, pack, offset, length, checksum, seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(host, kind, id) DO UPDATE SET "
                "pack = excluded.pack, offset = excluded.offset, length = excluded.length, "
                "checksum = excluded.checksum, seen = excluded.seen, damaged = 0, complete = 0 "
                "WHERE objects.damaged",
                [(hid, code, oid, pid, offset, length, digest, now)
                 for oid, offset, length, digest in rows])
            added = cur.rowcount
            db.execute("UPDATE packs SET state = 'done' WHERE pid = ?", (pid,))
        return added, gone

    def mark_damaged(self, host: str, kind: ObjectKind, ids: list[bytes], *,
                     found: Mapping[bytes, Location] | None = None) -> None:
        """Mark these objects damaged. `found`: where each was read corrupted; a row that
        no longer points there holds another copy (an upload healed it, or gc moved it
        since), which may well be intact, and is left alone."""
        hid, code = self._known_hid(host), KIND_CODE[kind]
        with self.write() as db:
            if found is None:
                marked = db.executemany("UPDATE objects SET damaged = 1 WHERE host = ? AND "
                                        "kind = ? AND id = ?",
                                        [(hid, code, i) for i in ids]).rowcount
            else:
                marked = db.executemany(
                    "UPDATE objects SET damaged = 1 WHERE host = ? AND kind = ? AND id = ? "
                    "AND pack = (SELECT pid FROM packs WHERE name = ?) AND offset = ?",
                    [(hid, code, i, found[i].pack, found[i].offset) for i in ids]).rowcount
            if marked:
                # A subtree holding damage is no longer complete: later commits walk it
                # again.
                db.execute(f"UPDATE objects SET complete = 0 WHERE host = ? AND "
                           f"kind = {_PAGES} AND complete", (hid,))

    def clear_damaged(self, host: str, kind: ObjectKind,
                      found: Mapping[bytes, Location]) -> None:
        """Clear the damage mark where the row still points at the location in `found`,
        which verify has just read matching its checksum."""
        hid, code = self._known_hid(host), KIND_CODE[kind]
        with self.write() as db:
            db.executemany(
                "UPDATE objects SET damaged = 0 WHERE host = ? AND kind = ? AND id = ? "
                "AND pack = (SELECT pid FROM packs WHERE name = ?) AND offset = ? AND damaged",
                [(hid, code, i, loc.pack, loc.offset) for i, loc in found.items()])

    def mark_complete(self, host: str, page_ids: list[bytes]) -> None:
        hid = self._known_hid(host)
        with self.write() as db:
            db.executemany(f"UPDATE objects SET complete = 1 WHERE host = ? AND kind = {_PAGES} "
                           "AND id = ? AND NOT damaged", [(hid, i) for i in page_ids])

    def damaged(self, host: str) -> list[bytes]:
        hid = self._hid(host)
        return [] if hid is None else [r[0] for r in self.read().execute(
            "SELECT id FROM objects INDEXED BY objects_damaged "
            f"WHERE host = ? AND kind = {_CHUNKS} AND damaged ORDER BY id", (hid,))]

    # --- points

    def point(self, host: str, point_id: str) -> PointRow | None:
        row = self.read().execute(
            "SELECT host, point_id, created, committed, parent, size, stats, pinned, verify, "
            "volumes, manifest, digest, arrival FROM points WHERE host = ? AND point_id = ?",
            (host, point_id)).fetchone()
        return None if row is None else _row(row)

    def damage_marks(self, host: str) -> frozenset[tuple[int, bytes]]:
        """(kind code, id) of the host's objects marked damaged: usually none."""
        hid = self._known_hid(host)
        return frozenset(self.read().execute(
            "SELECT kind, id FROM objects INDEXED BY objects_damaged WHERE host = ? AND damaged",
            (hid,)))

    def insert_point(self, row: PointRow, complete_pages: list[bytes],
                     damage_before: frozenset[tuple[int, bytes]] = frozenset()) -> None:
        """The point becomes visible, with the pages its commit checked marked complete,
        in one transaction. `damage_before`: the host's damage marks (`damage_marks`) when
        the check began. A mark made since (a verify or a restore's read, which take no
        commit lock) may lie below a checked page: then none is marked complete, and the
        next commit walks them again."""
        hid = self._known_hid(row.host)
        with self.write() as db:
            db.execute("INSERT INTO points(host, point_id, created, committed, parent, size, "
                       "stats, pinned, verify, volumes, manifest, digest, head, record_crc, "
                       "arrival) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT "
                       "coalesce(max(arrival), 0) + 1 FROM points WHERE host = ?))",
                       (row.host, row.point_id, row.created, row.committed, row.parent,
                        row.size, row.stats, int(row.pinned), row.verify, row.volumes,
                        row.manifest, row.digest, row.head(),
                        _record_crc(row.volumes, row.manifest), row.host))
            if not complete_pages:
                return
            marks = db.execute("SELECT kind, id FROM objects INDEXED BY objects_damaged "
                               "WHERE host = ? AND damaged", (hid,))
            if any(mark not in damage_before for mark in marks):
                return
            db.executemany(f"UPDATE objects SET complete = 1 WHERE host = ? AND kind = {_PAGES} "
                           "AND id = ? AND NOT damaged", [(hid, i) for i in complete_pages])

    def points_json(self, host: str, limit: int | None, before: float | None,
                    after: float | None) -> bytes:
        """The JSON list of PointInfo, built by SQLite itself: 100,000 points in a few tens
        of milliseconds, where building Python objects would take a second."""
        if limit is None and before is None and after is None:
            return self._all_points_json(host)
        where, args = ["host = ?"], [host]
        if before is not None:
            where.append("created < ?")
            args.append(before)  # type: ignore[arg-type]
        if after is not None:
            where.append("created > ?")
            args.append(after)  # type: ignore[arg-type]
        cond = " AND ".join(where)
        if limit is None:
            sql = (f"SELECT group_concat(doc, ',') FROM "
                   f"(SELECT doc FROM points WHERE {cond} ORDER BY created, point_id)")
        else:  # the newest `limit` points, still listed oldest first
            sql = (f"SELECT group_concat(doc, ',') FROM (SELECT doc, created, point_id FROM "
                   f"(SELECT doc, created, point_id FROM points WHERE {cond} ORDER BY created DESC, point_id DESC "
                   "LIMIT ?) ORDER BY created, point_id)")
            args.append(limit)  # type: ignore[arg-type]
        (text,) = self.read().execute(sql, args).fetchone()
        return f"[{text or ''}]".encode()

    def _all_points_json(self, host: str) -> bytes:
        """The full listing, cached per host until its points change (in this process or
        any other: the generation is bumped by triggers in the same transaction)."""
        db = self.read()
        row = db.execute("SELECT points_gen FROM hosts WHERE name = ?", (host,)).fetchone()
        with self._cache_lock:
            cached = self._list_cache.get(host)
        if cached and row and cached[0] == row[0]:
            return cached[1]
        # Generation and rows read in one transaction: both describe the same state.
        db.execute("BEGIN")
        try:
            (gen,) = db.execute("SELECT points_gen FROM hosts WHERE name = ?",
                                (host,)).fetchone() or (-1,)
            (text,) = db.execute(
                "SELECT group_concat(doc, ',') FROM (SELECT doc "
                "FROM points WHERE host = ? ORDER BY created, point_id)", (host,)).fetchone()
        finally:
            db.execute("COMMIT")
        body = f"[{text or ''}]".encode()
        with self._cache_lock:
            if len(self._list_cache) >= LIST_CACHE_HOSTS and host not in self._list_cache:
                self._list_cache.pop(next(iter(self._list_cache)))
            self._list_cache[host] = (gen, body)
        return body

    def point_rows(self, host: str | None = None) -> list[PointRow]:
        sql = ("SELECT host, point_id, created, committed, parent, size, stats, pinned, verify,"
               " volumes, manifest, digest, arrival FROM points")
        cur = (self.read().execute(sql + " WHERE host = ? ORDER BY created", (host,)) if host
               else self.read().execute(sql + " ORDER BY host, created"))
        return [_row(r) for r in cur]

    def set_pinned(self, host: str, point_id: str, pinned: bool) -> bool:
        """False when there is no such point (any more)."""
        with self.write() as db:
            return bool(db.execute("UPDATE points SET pinned = ? WHERE host = ? AND point_id = ?",
                                   (int(pinned), host, point_id)).rowcount)

    def delete_points(self, host: str, point_ids: list[str], *,
                      keep_pinned: bool = False) -> list[str]:
        """Delete these points; returns those deleted. `keep_pinned`: a point pinned since
        the caller looked stays (prune decides on a listing a pin may overtake)."""
        sql = "DELETE FROM points WHERE host = ? AND point_id = ?" + (
            " AND NOT pinned" if keep_pinned else "")
        with self.write() as db:
            return [p for p in point_ids if db.execute(sql, (host, p)).rowcount]

    def damaged_records(self, host: str) -> set[str]:
        """Points of `host` whose volumes or manifest differ from what was committed."""
        return {point_id for point_id, volumes, manifest, crc in self.read().execute(
            "SELECT point_id, volumes, manifest, record_crc FROM points WHERE host = ?", (host,))
            if crc is not None and _record_crc(volumes, manifest) != crc}

    def set_verify(self, statuses: list[tuple[str, str, str]]) -> None:
        """(host, point_id, status) triples."""
        with self.write() as db:
            db.executemany("UPDATE points SET verify = ? WHERE host = ? AND point_id = ?",
                           [(s, h, p) for h, p, s in statuses])

    # --- garbage collection and recovery

    def object_ages(self, host: str, kind: ObjectKind) -> list[tuple[bytes, float]]:
        hid = self._hid(host)
        return [] if hid is None else self.read().execute(
            "SELECT id, seen FROM objects WHERE host = ? AND kind = ?",
            (hid, KIND_CODE[kind])).fetchall()

    def delete_unseen(self, host: str, kind: ObjectKind, ids: list[bytes],
                      cutoff: float) -> int:
        """Delete these objects' rows unless seen since `cutoff` (a "missing" query may
        have refreshed one after GC looked). Returns how many went."""
        hid, code = self._known_hid(host), KIND_CODE[kind]
        with self.write() as db:
            cur = db.executemany("DELETE FROM objects WHERE host = ? AND kind = ? AND id = ? "
                                 "AND seen < ?", [(hid, code, i, cutoff) for i in ids])
            return max(cur.rowcount, 0)

    def keep_complete_only(self, host: str, live_pages: set[bytes]) -> None:
        """Clear "complete" on every page of `host` outside `live_pages`."""
        hid = self._known_hid(host)
        marked = [pid for (pid,) in self.read().execute(
            f"SELECT id FROM objects WHERE host = ? AND kind = {_PAGES} AND complete", (hid,))]
        with self.write() as db:
            db.executemany(f"UPDATE objects SET complete = 0 WHERE host = ? AND kind = {_PAGES} "
                           "AND id = ?", [(hid, p) for p in marked if p not in live_pages])

    def packs(self) -> list[PackRow]:
        return [PackRow(*r) for r in self.read().execute(
            "SELECT name, state, created, size FROM packs")]

    def pack_usage(self) -> dict[str, tuple[int, int]]:
        """pack -> (objects, bytes) still referenced by the catalog."""
        return {name: (n, size) for name, n, size in self.read().execute(
            "SELECT p.name, u.n, u.bytes FROM (SELECT pack, count(*) AS n, sum(length) AS "
            "bytes FROM objects GROUP BY pack) AS u JOIN packs AS p ON p.pid = u.pack")}

    def retire_pack(self, name: str) -> bool:
        """Mark a pack no object row points to as retired: its file is to be deleted, then
        its row (`forget_retired`). False (and nothing done) if an object points to it."""
        with self.write() as db:
            pid = _pack_id(db, name)
            if pid is None:
                return True
            if db.execute("SELECT 1 FROM objects WHERE pack = ? LIMIT 1", (pid,)).fetchone():
                return False
            db.execute("UPDATE packs SET state = 'retired' WHERE pid = ?", (pid,))
            return True

    def forget_retired(self, name: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM packs WHERE name = ? AND state = 'retired'", (name,))

    def pack_objects(self, name: str) -> list[tuple[str, ObjectKind, bytes, Location]]:
        return [(host, _KIND_OF_CODE[kind], oid, Location(name, off, length, digest,
                                                           bool(damaged), bool(complete)))
                for host, kind, oid, off, length, digest, damaged, complete in
                self.read().execute(
                    "SELECT h.name, o.kind, o.id, o.offset, o.length, o.checksum, o.damaged, "
                    "o.complete FROM objects AS o JOIN hosts AS h ON h.hid = o.host "
                    "WHERE o.pack = (SELECT pid FROM packs WHERE name = ?) ORDER BY o.offset",
                    (name,))]

    def move_objects(self, old: str, new: str,
                     moves: list[tuple[str, ObjectKind, bytes, int, int]]) -> None:
        """Repoint (host, kind, id, old offset, new offset) rows from pack `old` to the
        written pack `new`, mark `new` done and `old` retired: one transaction."""
        hids = {host: self._known_hid(host) for host, *_ in moves}
        with self.write() as db:
            old_pid, new_pid = _registered_pack(db, old), _registered_pack(db, new)
            db.executemany("UPDATE objects SET pack = ?, offset = ? WHERE host = ? AND "
                           "kind = ? AND id = ? AND pack = ? AND offset = ?",
                           [(new_pid, new_off, hids[h], KIND_CODE[k], oid, old_pid, old_off)
                            for h, k, oid, old_off, new_off in moves])
            db.execute("UPDATE packs SET state = 'done' WHERE pid = ?", (new_pid,))
            db.execute("UPDATE packs SET state = 'retired' WHERE pid = ?", (old_pid,))

    def forget_pending(self, names: list[str]) -> list[str]:
        """Forget the packs of `names` that are still pending; returns those forgotten. A
        pack whose upload made it done meanwhile stays: its file must stay too."""
        with self.write() as db:
            return [n for n in names if db.execute(
                "DELETE FROM packs WHERE name = ? AND state = 'pending'", (n,)).rowcount]

    def status(self) -> dict[str, int]:
        db = self.read()
        (hosts,) = db.execute("SELECT count(*) FROM hosts").fetchone()
        (points,) = db.execute("SELECT count(*) FROM points").fetchone()
        objects = {_KIND_OF_CODE[kind]: (n, b) for kind, n, b in db.execute(
            "SELECT kind, count(*), coalesce(sum(length), 0) FROM objects GROUP BY kind")}
        (damaged,) = db.execute("SELECT count(*) FROM objects WHERE damaged").fetchone()
        packs, pack_bytes = db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM packs WHERE state = 'done'").fetchone()
        chunks, chunk_bytes = objects.get(ObjectKind.chunks, (0, 0))
        return {"hosts": hosts, "points": points, "chunks": chunks, "chunk_bytes": chunk_bytes,
                "pages": objects.get(ObjectKind.pages, (0, 0))[0],
                "damaged_objects": damaged, "packs": packs, "pack_bytes": pack_bytes}


def _record_crc(volumes: str, manifest: str) -> int:
    """CRC-32 of what a restore reads of a point's row. SQLite checks the structure of
    its pages (`integrity_problems`), not the values in them: a changed byte of a
    manifest would leave a point nothing can open, that verify called ok."""
    return zlib.crc32(f"{volumes}\n{manifest}".encode())


def _row(r: tuple[Any, ...]) -> PointRow:
    return PointRow(host=r[0], point_id=r[1], created=r[2], committed=r[3], parent=r[4],
                    size=r[5], stats=r[6], pinned=bool(r[7]), verify=r[8], volumes=r[9],
                    manifest=r[10], digest=r[11], arrival=r[12])


def _chunks(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _pack_id(db: sqlite3.Connection, name: str) -> int | None:
    row = db.execute("SELECT pid FROM packs WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def _registered_pack(db: sqlite3.Connection, name: str) -> int:
    """The ID of a pack that must still be registered: GC forgets a pending pack after
    PENDING_TIMEOUT, and an upload slower than that must fail (the client retries), not
    add rows pointing at a pack file GC has deleted."""
    pid = _pack_id(db, name)
    if pid is None:
        raise ServerError(f"pack {name} is no longer registered in the catalog (its upload "
                          "outlasted the pending timeout and garbage collection removed it); "
                          "nothing of it was stored", 503)
    return pid


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Catalog version 1 to 3, inside the caller's transaction: hosts and packs get integer
    keys, object rows are copied in pack order into the rowid table (with version 3's
    column name `checksum`). Row counts are compared before the old tables go: no row
    may be lost silently."""
    for trigger in ("points_ins", "points_upd", "points_del"):  # they name the old `hosts`
        db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    db.execute(_HOSTS_TABLE.format(name="hosts_v2"))
    db.execute("INSERT INTO hosts_v2(name, created, key, retention, points_gen) "
               "SELECT name, created, key, retention, points_gen FROM hosts "
               "ORDER BY created, name")
    db.execute(_PACKS_TABLE.format(name="packs_v2"))
    db.execute("INSERT INTO packs_v2(name, state, created, size) "
               "SELECT name, state, created, size FROM packs ORDER BY created, name")
    db.execute(_OBJECTS_TABLE.format(name="objects_v2"))
    db.execute(
        "INSERT INTO objects_v2(host, kind, id, pack, offset, length, checksum, seen, damaged, "
        "complete) SELECT h.hid, CASE o.kind WHEN 'chunks' THEN ? WHEN 'pages' THEN ? END, "
        "o.id, p.pid, o.offset, o.length, o.sha256, o.seen, o.damaged, o.complete "
        "FROM objects AS o JOIN hosts_v2 AS h ON h.name = o.host "
        "JOIN packs_v2 AS p ON p.name = o.pack ORDER BY p.pid, o.offset", (_CHUNKS, _PAGES))
    (old,) = db.execute("SELECT count(*) FROM objects").fetchone()
    (new,) = db.execute("SELECT count(*) FROM objects_v2").fetchone()
    if old != new:
        raise UsageError(f"cannot migrate the catalog: {old - new} of its {old} object rows "
                         "name a host or pack it does not know (left unchanged)")
    for table in ("objects", "packs", "hosts"):
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}_v2 RENAME TO {table}")
