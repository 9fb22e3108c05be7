"""Point listings: gzip on the wire, the same JSON either way, pin and verify changes
visible at once; catalogs made before the stored listing column get it filled."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import requests

from cdp_server.catalog import PointRow
from cdp_server.compress import accepts_gzip
from cdp_server.sqlite_catalog import SqliteCatalog
from cdpcore.api import API_PREFIX, PointInfo, Role

from .points import BS, build_point, new_codec, push

POINTS = 40  # about 11 KB of JSON: over the 8 KiB gzip threshold


def _get(server: Any, query: str, encoding: str) -> requests.Response:
    # stream=True: the raw body, to see what was sent before requests inflates it
    resp = requests.get(server.url + API_PREFIX + "/hosts/web1/points" + query,
                        headers={"Authorization": f"Bearer {server.admin_token}",
                                 "Accept-Encoding": encoding},
                        verify=str(server.ca_path), timeout=30, stream=True)
    assert resp.status_code == 200, resp.text
    return resp


def _both(server: Any, query: str = "") -> list[dict[str, Any]]:
    """The listing fetched plain and gzipped: asserts both carry the same JSON."""
    plain = _get(server, query, "identity")
    assert "Content-Encoding" not in plain.headers
    plain_body = plain.raw.read()
    packed = _get(server, query, "gzip, deflate")
    assert packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed.raw.read()) == plain_body
    doc: list[dict[str, Any]] = json.loads(plain_body)
    return doc


def test_listing_is_gzipped_and_follows_pin_and_verify(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    admin = cdp_server.admin()
    codec = new_codec()
    base = time.time() - 10_000
    ids = [push(agent, "web1", build_point(codec, "web1", {"vda": os.urandom(BS)},
                                            created=base + i)).point_id
           for i in range(POINTS)]
    listed = _both(cdp_server)
    assert [p["point_id"] for p in listed] == ids
    assert [PointInfo.model_validate(p) for p in listed] == admin.points("web1")
    assert {(p["pinned"], p["verify"]) for p in listed} == {(False, "unverified")}

    admin.pin("web1", ids[3])
    listed = _both(cdp_server)
    assert [p["point_id"] for p in listed if p["pinned"]] == [ids[3]]
    assert [p["point_id"] for p in _both(cdp_server, f"?limit={POINTS}") if p["pinned"]] \
        == [ids[3]]

    assert admin.verify().damaged_points == []
    assert {p["verify"] for p in _both(cdp_server)} == {"ok"}
    admin.unpin("web1", ids[3])
    assert not any(p["pinned"] for p in _both(cdp_server))
    # a small answer goes as it is
    small = _get(cdp_server, "?limit=2", "gzip")
    assert "Content-Encoding" not in small.headers
    assert [p["point_id"] for p in json.loads(small.raw.read())] == ids[-2:]


def test_accept_encoding_parsing() -> None:
    assert accepts_gzip("gzip, deflate")
    assert accepts_gzip("deflate, GZIP;q=0.5")
    assert accepts_gzip("*")
    assert not accepts_gzip("")
    assert not accepts_gzip("identity")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("br, gzip;q=0.0")
    # RFC 9110 12.5.3: gzip's own item rules, wherever it stands; `*` only stands in
    assert accepts_gzip("*;q=0, gzip")
    assert accepts_gzip("identity;q=0, *")
    assert not accepts_gzip("*, gzip;q=0")
    assert not accepts_gzip("gzip;q=0, *")
    assert not accepts_gzip("*;q=0")
    assert accepts_gzip("x-gzip")  # the same coding (RFC 9110 8.4.1.3)
    assert accepts_gzip("gzip ; Q=0.001")
    assert accepts_gzip("gzip;level=9;q=1.000")
    assert not accepts_gzip("gzip;level=9;q=0")
    # a weight that is no qvalue counts as 0: identity is always safe to send
    for bad in ("nan", "inf", "1e3", "-1", "0.0001", "2", ""):
        assert not accepts_gzip(f"gzip;q={bad}"), bad


#: Accept-Encoding values and whether the listing may come gzipped.
ACCEPT_ENCODINGS = [
    ("gzip", True), ("*", True), ("*;q=0, gzip", True), ("identity;q=0.5, *;q=0.1", True),
    ("gzip;q=0", False), ("*, gzip;q=0", False), ("gzip;q=0, *", False),
    ("*;q=0", False), ("br", False), ("gzip;q=nan", False),
]


def test_accept_encoding_is_followed_by_the_server(cdp_server) -> None:  # type: ignore[no-untyped-def]
    """A listing comes gzipped exactly when the request's Accept-Encoding allows gzip,
    whatever the order of its items, for the kept full listing and a filtered one."""
    agent = cdp_server.client(cdp_server.add_host("web1")[Role.agent])
    codec = new_codec()
    for i in range(POINTS):
        push(agent, "web1", build_point(codec, "web1", {"vda": os.urandom(BS)},
                                        created=1000.0 + i))
    for query in ("", f"?limit={POINTS}"):
        for encoding, packed in ACCEPT_ENCODINGS:
            resp = _get(cdp_server, query, encoding)
            assert (resp.headers.get("Content-Encoding") == "gzip") is packed, (query, encoding)
            body = resp.raw.read()
            assert len(json.loads(gzip.decompress(body) if packed else body)) == POINTS


def test_catalog_without_stored_listing_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    catalog = SqliteCatalog(path)
    catalog.create_host("web1", {})
    row = PointRow(host="web1", point_id="a" * 32, created=1.5, committed=2.5, parent=None,
                   size=4096, stats='{"changed_bytes":1}', pinned=False,
                   verify="unverified", volumes="[]", manifest="", digest="d")
    catalog.insert_point(row, [])
    catalog.set_pinned("web1", row.point_id, True)
    expected = catalog.points_json("web1", None, None, None)
    # the catalog as the previous version made it: no `doc` column, no triggers for it,
    # the listing index without `doc`
    db = sqlite3.connect(path)
    db.executescript("DROP TRIGGER points_doc_ins; DROP TRIGGER points_doc_upd; "
                     "DROP INDEX points_listing; ALTER TABLE points DROP COLUMN doc; "
                     "CREATE INDEX points_created ON points(host, created, point_id);")
    db.close()
    upgraded = SqliteCatalog(path)
    indexes = {r[0] for r in upgraded.read().execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'points' "
        "AND sql IS NOT NULL")}
    assert indexes == {"points_listing", "points_arrival"}
    assert upgraded.points_json("web1", None, None, None) == expected
    info = PointInfo.model_validate_json(expected[1:-1])
    assert (info.point_id, info.pinned, info.stats.changed_bytes) == ("a" * 32, True, 1)
