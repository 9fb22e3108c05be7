"""A datastore written by the server of catalog version 1 (the committed fixture
tests/fixtures/datastore-v1, made by tests/fixtures/make_datastore.py) opens in this
server: the catalog is migrated to the current version in one transaction, every point,
object location, checksum and mark survives, both points restore byte for byte, and a
migration that would lose a row changes nothing. A catalog of version 2 only has its
checksum column renamed."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cdp_server.catalog import Location
from cdp_server.datastore import CATALOG_FILE, Datastore
from cdp_server.sqlite_catalog import CATALOG_VERSION
from cdpcore import records
from cdpcore.api import ObjectKind
from cdpcore.errors import UsageError
from tests.core.test_compat import FIXTURES, open_repo, restore

FIXTURE = FIXTURES / "datastore-v1"
REPO = FIXTURES / "repo-v2"
DAMAGED = bytes(range(1, 33))


def _copy(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    return data


def _schema(data: Path) -> tuple[int, str, int]:
    """(user_version, the objects table's SQL, free pages in the file)."""
    db = sqlite3.connect(data / CATALOG_FILE)
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'objects'").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        return version, sql, free
    finally:
        db.close()


class _Pages:
    def __init__(self, ds: Datastore) -> None:
        self.ds = ds

    def get_pages(self, page_ids: list[bytes]) -> Mapping[bytes, bytes]:
        return {oid: blob for oid, blob, _ in self.ds.fetch("fixture", ObjectKind.pages, page_ids)}


def _chunk(ds: Datastore, chunk_id: bytes) -> bytes:
    ((_, blob, _),) = ds.fetch("fixture", ObjectKind.chunks, [chunk_id])
    return blob


def test_version_1_datastore_is_migrated_and_reads_back_exactly(tmp_path: Path) -> None:
    data = _copy(tmp_path)
    version, sql, _ = _schema(data)
    assert version == 0 and "host TEXT" in sql  # the fixture is still of version 1
    expected: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())

    ds = Datastore.open(data)
    version, _, free = _schema(data)
    assert version == CATALOG_VERSION == 3
    assert free == 0  # the old tables' pages were given back
    assert ds.recover().orphan_objects == 0  # every pack file is still known
    assert ds.catalog.status() == expected["status"]
    assert json.loads(ds.catalog.points_json("fixture", None, None, None)) == expected["points"]
    assert [d.hex() for d in ds.catalog.damaged("fixture")] == expected["damaged"]
    for name, want in expected["objects"].items():
        host, kind, oid = name.split("/")
        loc = ds.catalog.locate(host, ObjectKind(kind), [bytes.fromhex(oid)])[bytes.fromhex(oid)]
        assert loc == Location(want["pack"], want["offset"], want["length"],
                               bytes.fromhex(want["sha256"]), want["damaged"], want["complete"])
    assert ds.catalog.damaged("other") == []
    codec, repo = open_repo(REPO)
    for point_id, digest in repo["volume_sha256"].items():  # type: ignore[attr-defined]
        _, volume = restore(codec, point_id, REPO, pages=_Pages(ds),
                            chunk=lambda cid: _chunk(ds, cid))
        assert hashlib.sha256(volume).hexdigest() == digest

    # and it goes on working: the damaged chunk is missing until uploaded again
    chunk_ids = [bytes.fromhex(p.name) for p in sorted((REPO / "chunks").iterdir())]
    assert ds.missing("fixture", ObjectKind.chunks, [*chunk_ids, DAMAGED]) == [DAMAGED]
    healed = ds.upload("fixture", ObjectKind.chunks,
                       records.encode_records([(DAMAGED, b"a new copy")]))
    assert (healed.stored, healed.duplicates) == (1, 0)
    assert ds.catalog.damaged("fixture") == []
    assert ds.fetch("fixture", ObjectKind.chunks, [DAMAGED])[0][1] == b"a new copy"
    assert ds.missing("other", ObjectKind.chunks, chunk_ids) == chunk_ids[1:]

    # opening it again changes nothing
    status, schema = ds.catalog.status(), _schema(data)
    assert Datastore.open(data).catalog.status() == status
    assert _schema(data) == schema


def test_migration_that_would_lose_a_row_leaves_the_catalog_unchanged(tmp_path: Path) -> None:
    data = _copy(tmp_path)
    db = sqlite3.connect(data / CATALOG_FILE)
    with db:  # one object row now names a pack the catalog does not know
        db.execute("UPDATE objects SET pack = 'packs/00/gone.pack' WHERE id = ?", (DAMAGED,))
    db.close()
    before = _schema(data)
    with pytest.raises(UsageError, match="1 of its 8 object rows name a host or pack"):
        Datastore.open(data)
    assert _schema(data) == before


def test_catalog_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    data = _copy(tmp_path)
    Datastore.open(data)
    db = sqlite3.connect(data / CATALOG_FILE)
    db.execute(f"PRAGMA user_version = {CATALOG_VERSION + 1}")
    db.close()
    with pytest.raises(UsageError, match="catalog of version 4, newer than this server's 3"):
        Datastore.open(data)


def test_version_2_catalog_gets_its_checksum_column_renamed(tmp_path: Path) -> None:
    """Version 3 differs from version 2 only in the name of `objects.checksum` (it was
    `sha256`): a version 2 catalog is this one with the old name and version number."""
    data = _copy(tmp_path)
    status = Datastore.open(data).catalog.status()
    db = sqlite3.connect(data / CATALOG_FILE)
    db.execute("ALTER TABLE objects RENAME COLUMN checksum TO sha256")
    db.execute("PRAGMA user_version = 2")
    db.close()
    version, sql, _ = _schema(data)
    assert (version, "sha256 BLOB NOT NULL" in sql) == (2, True)

    ds = Datastore.open(data)
    version, sql, _ = _schema(data)
    assert (version, "checksum BLOB NOT NULL" in sql, "sha256" in sql) == (3, True, False)
    assert ds.catalog.status() == status
    objects = json.loads((FIXTURE / "expected.json").read_text())["objects"]
    oid = bytes.fromhex(next(name for name, want in objects.items()
                             if name.startswith("fixture/chunks/") and not want["damaged"])
                        .split("/")[2])
    stored = ds.catalog.locate("fixture", ObjectKind.chunks, [oid])[oid].checksum
    assert len(stored) == 32  # uploaded as v1 records: SHA-256, still checked as one
    assert len(ds.fetch("fixture", ObjectKind.chunks, [oid])) == 1
