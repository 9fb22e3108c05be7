"""Tests' direct view of a datastore's catalog (cdp_server.sqlite_catalog): where an
object's bytes lie, and the row edits that fault-injection tests make. The one place
the tests know the catalog's schema."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from cdp_server.datastore import CATALOG_FILE, OBJECTS_DIR
from cdp_server.sqlite_catalog import KIND_CODE
from cdpcore import records
from cdpcore.api import ObjectKind

_WHERE = "o.kind = ? AND o.id = ? AND (? IS NULL OR h.name = ?)"
_FROM = ("FROM objects AS o JOIN packs AS p ON p.pid = o.pack "
         "JOIN hosts AS h ON h.hid = o.host")


def _args(kind: str, object_id: bytes, host: str | None) -> tuple[object, ...]:
    return KIND_CODE[ObjectKind(kind)], object_id, host, host


def object_location(data_dir: Path, kind: str, object_id: bytes,
                    host: str | None = None) -> tuple[Path, int, int]:
    """(pack file, offset, length) of a stored object (of `host`, or of any host)."""
    db = sqlite3.connect(f"file:{data_dir / CATALOG_FILE}?mode=ro", uri=True)
    try:
        row = db.execute(f"SELECT p.name, o.offset, o.length {_FROM} WHERE {_WHERE}",
                         _args(kind, object_id, host)).fetchone()
    finally:
        db.close()
    assert row is not None, f"no stored {kind} {object_id.hex()}"
    return data_dir / OBJECTS_DIR / row[0], row[1], row[2]


def set_checksum(data_dir: Path, kind: str, object_id: bytes, checksum: bytes) -> None:
    """Store another checksum for an object: a server that cannot notice its damage."""
    db = sqlite3.connect(data_dir / CATALOG_FILE)
    try:
        with db:
            db.execute("UPDATE objects SET checksum = ? WHERE rowid IN "
                       f"(SELECT o.rowid {_FROM} WHERE {_WHERE})",
                       (checksum, *_args(kind, object_id, None)))
    finally:
        db.close()


def corrupt_object(data_dir: Path, kind: str, object_id: bytes, *,
                   keep_checksum: bool) -> None:
    """Flip one byte of a stored object in the server's pack file. With keep_checksum, also
    store the new blob's checksum in the catalog: a server that cannot notice (or a
    hostile one), so only the client's authentication check stands in the way."""
    path, offset, length = object_location(data_dir, kind, object_id)
    blob = bytearray(path.read_bytes()[offset:offset + length])
    blob[length // 2] ^= 0x40
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(blob)
    if keep_checksum:
        set_checksum(data_dir, kind, object_id, records.CURRENT.checksum(bytes(blob)))


def object_counts(data_dir: Path, host: str) -> dict[str, int]:
    """Stored objects of `host` by kind ("chunks", "pages")."""
    db = sqlite3.connect(f"file:{data_dir / CATALOG_FILE}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT o.kind, count(*) FROM objects AS o JOIN hosts AS h "
                          "ON h.hid = o.host WHERE h.name = ? GROUP BY o.kind", (host,))
        codes = {code: kind.value for kind, code in KIND_CODE.items()}
        return {codes[code]: n for code, n in rows}
    finally:
        db.close()


def age_everything(data_dir: Path, seconds: float) -> None:
    """Pretend every object was last seen `seconds` ago (the catalog is the only clock GC
    reads: no file timestamps)."""
    db = sqlite3.connect(data_dir / CATALOG_FILE)
    try:
        with db:
            db.execute("UPDATE objects SET seen = ?", (time.time() - seconds,))
    finally:
        db.close()


def remove_object(data_dir: Path, kind: str, object_id: bytes) -> None:
    """Drop an object's catalog row (of every host): the server no longer has it."""
    db = sqlite3.connect(data_dir / CATALOG_FILE)
    try:
        with db:
            gone = db.execute("DELETE FROM objects WHERE rowid IN "
                              f"(SELECT o.rowid {_FROM} WHERE {_WHERE})",
                              _args(kind, object_id, None)).rowcount
    finally:
        db.close()
    assert gone, f"no stored {kind} {object_id.hex()}"
