"""Storage faults under the datastore: bit flips, truncated and missing pack files, a
corrupted catalog page, a full disk. Verify names the exact points, volumes and byte
ranges affected; a read never returns damaged bytes; the next upload of the same blocks
heals the damage."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cdpcore import format as fmt
from cdpcore.api import ObjectKind, Retention, Role, VerifyStatus
from cdpcore.client import CdpClient
from cdpcore.errors import NotFoundError, ServerError
from tests.server.stored import object_location

from .conftest import iterations, record
from .pointkit import BS, Point, build, new_codec, push, random_volume, read_back

REPO = Path(__file__).resolve().parents[2]


def locate(data_dir: Path, kind: str, oid: bytes) -> tuple[Path, int, int]:
    return object_location(data_dir, kind, oid)


def expected_ranges(points: list[Point], chunk: bytes) -> set[tuple[str, str, int, int]]:
    """(point, volume, offset, length) of every block holding `chunk`: what verify must name."""
    out = set()
    for p in points:
        for name, data in p.volumes.items():
            for b in range(len(data) // BS):
                block = data[b * BS:(b + 1) * BS]
                if any(block) and p_codec(p).keys.chunk_id(block) == chunk:
                    out.add((p.point_id, name, b * BS, BS))
    return out


_CODECS: dict[str, Any] = {}


def p_codec(p: Point) -> Any:
    return _CODECS[p.host]


def reported(report: Any) -> set[tuple[str, str, int, int]]:
    return {(r.point_id, r.volume, r.offset, r.length) for r in report.ranges}


@pytest.fixture
def stored(cdp_server: Any, rng: random.Random) -> Iterator[dict[str, Any]]:
    tokens = cdp_server.add_host("store")
    codec = new_codec()
    _CODECS["store"] = codec
    agent = cdp_server.client(tokens[Role.agent])
    disk = bytearray(random_volume(rng, 64, zero_share=0.1))
    points = []
    for _ in range(3):
        for _ in range(4):
            b = rng.randrange(64)
            disk[b * BS:(b + 1) * BS] = rng.randbytes(BS)
        points.append(build(codec, "store", {"sda": bytes(disk)}))
        push(agent, points[-1])
    yield {"agent": agent, "codec": codec, "points": points, "admin": cdp_server.admin()}


def test_bit_flips_are_found_with_exact_ranges_and_healed_by_the_next_upload(
        cdp_server: Any, stored: dict[str, Any], rng: random.Random) -> None:
    points: list[Point] = stored["points"]
    admin: CdpClient = stored["admin"]
    flips = 0
    for _ in range(iterations(4)):
        chunk = rng.choice(sorted({c for p in points for c in p.chunks}))
        path, offset, length = locate(cdp_server.data_dir, "chunks", chunk)
        with open(path, "r+b") as f:
            f.seek(offset + rng.randrange(length))
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
        flips += 1
        report = admin.verify()
        assert report.damaged_chunks == [chunk.hex()]
        assert reported(report) == expected_ranges(points, chunk)
        assert sorted(report.damaged_points) == sorted({r[0] for r in reported(report)})
        hit = next(p for p in points if chunk in p.chunks)
        # a read of the damaged chunk is refused, naming it; never the flipped bytes
        with pytest.raises(NotFoundError, match=chunk.hex()):
            read_back(admin, stored["codec"], "store", hit.point_id)
        assert admin.damaged("store") == [chunk]
        # the next backup holding that block uploads it again: healed
        assert chunk in stored["agent"].missing("store", ObjectKind.chunks, [chunk])
        push(stored["agent"], hit)
        healed = admin.verify()
        assert (healed.damaged_chunks, healed.ranges) == ([], [])
        for p in points:
            assert read_back(admin, stored["codec"], "store", p.point_id) == p.volumes
    record("storage_bit_flips", flips=flips)


def test_truncated_and_missing_packs_are_named(cdp_server: Any, stored: dict[str, Any],
                                               rng: random.Random) -> None:
    points: list[Point] = stored["points"]
    admin: CdpClient = stored["admin"]
    # the first point's first upload is one pack: truncate it by one byte
    chunks = sorted(points[0].chunks)
    path, _, _ = locate(cdp_server.data_dir, "chunks", chunks[0])
    size = path.stat().st_size
    in_pack = {c for c in chunks if locate(cdp_server.data_dir, "chunks", c)[0] == path}
    last = max(in_pack, key=lambda c: locate(cdp_server.data_dir, "chunks", c)[1])
    with open(path, "r+b") as f:
        f.truncate(size - 1)
    report = admin.verify()
    assert report.damaged_chunks == [last.hex()]
    assert reported(report) == expected_ranges(points, last)
    # a pack file gone: every chunk in it is named, with every range it held
    other = next(c for p in points[1:] for c in sorted(p.chunks) if c not in in_pack)
    gone, _, _ = locate(cdp_server.data_dir, "chunks", other)
    lost = {c for p in points for c in p.chunks
            if locate(cdp_server.data_dir, "chunks", c)[0] == gone}
    gone.unlink()
    report = admin.verify()
    assert set(report.damaged_chunks) == {c.hex() for c in lost | {last}}
    want = set().union(*(expected_ranges(points, c) for c in lost | {last}))
    assert reported(report) == want
    record("storage_truncated_missing", truncated_packs=1, deleted_packs=1,
           chunks_named=len(report.damaged_chunks), ranges_named=len(report.ranges))


def _scribble_catalog_page(data_dir: Path, table: str) -> None:
    """Overwrite a whole b-tree page of `table` in the (checkpointed) catalog."""
    catalog = data_dir / "catalog.sqlite"
    db = sqlite3.connect(catalog)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    page = db.execute("SELECT max(pageno) FROM dbstat WHERE name = ?", (table,)).fetchone()[0]
    db.close()
    with open(catalog, "r+b") as f:
        f.seek(page_size * (page - 1))
        f.write((bytes(range(256)) * (page_size // 256 + 1))[:page_size])
    db = sqlite3.connect(catalog)
    try:  # SQLite itself sees the damage: what the product should report
        assert db.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
    except sqlite3.DatabaseError:
        pass
    finally:
        db.close()


def _verify_cli(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdp_server", "verify", "--data",
                           str(data_dir)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_corrupted_catalog_page_is_found_by_verify(cdp_server: Any,
                                                   stored: dict[str, Any]) -> None:
    cdp_server.stop()
    _scribble_catalog_page(cdp_server.data_dir, "objects_pack")
    out = _verify_cli(cdp_server.data_dir)
    assert out.returncode != 0 and "catalog" in (out.stdout + out.stderr).lower()


def test_corrupted_points_page_is_an_error_not_a_crash(cdp_server: Any,
                                                       stored: dict[str, Any]) -> None:
    cdp_server.stop()
    _scribble_catalog_page(cdp_server.data_dir, "points")
    out = _verify_cli(cdp_server.data_dir)
    record("storage_catalog_page", exit_code=out.returncode, stderr=out.stderr[-300:])
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "catalog" in out.stderr.lower()


def test_full_disk_stores_nothing_half_and_recovers(tmp_path: Path, server_cert: Any,
                                                    rng: random.Random,
                                                    small_fs: Callable[[int], Path]) -> None:
    """The datastore on a 24 MiB tmpfs: uploads fail with 507 once it is full, nothing
    half-written is visible, earlier points stay whole, verify, prune and gc still work
    (they write to the catalog: uploads leave it a reserve), and once gc has freed space
    the refused point uploads."""
    from tests.conftest import ServerHandle, _cli, _free_port  # the shared server fixture's parts

    handle = None
    try:
        data = small_fs(24) / "datastore"
        init = _cli("init", "--data", str(data))
        port = _free_port()
        handle = ServerHandle(url=f"https://127.0.0.1:{port}",
                              ca_path=Path(server_cert["cert"]),
                              fingerprint=server_cert["fingerprint"],
                              admin_token=init["admin_token"], data_dir=data,
                              key_path=Path(server_cert["key"]),
                              log_path=tmp_path / "server.log", port=port)
        handle.start()
        tokens = handle.add_host("full")
        codec = new_codec()
        _CODECS["full"] = codec
        agent = handle.client(tokens[Role.agent], retries=0)
        first = build(codec, "full", {"sda": random_volume(rng, 256, 0)})  # 1 MiB
        push(agent, first)
        refused = None
        pushed = 0
        for _ in range(40):  # 2 MiB each: the 24 MiB fill up
            point = build(codec, "full", {"sda": random_volume(rng, 512, 0)})
            try:
                push(agent, point)
                pushed += 1
            except ServerError as exc:
                refused = exc
                break
        assert refused is not None and refused.status == 507, refused
        assert "the datastore is full" in str(refused)
        admin = handle.admin()
        assert read_back(admin, codec, "full", first.point_id) == first.volumes
        report = admin.verify()
        assert (report.damaged_chunks, report.missing_chunks) == ([], [])
        assert {p.verify for p in admin.points("full")} == {VerifyStatus.ok}
        assert not list((data / "objects" / "tmp").glob("*.tmp"))
        admin.set_retention("full", Retention(keep_last=1))
        assert len(admin.prune("full").removed) == pushed
        assert admin.gc(grace=0).freed_bytes > 0
        push(agent, point)
        assert read_back(admin, codec, "full", point.point_id) == point.volumes
        record("storage_full_disk", points_before_full=pushed + 1, status=refused.status)
    finally:
        if handle is not None:
            handle.stop()


def test_verify_cli_exit_code_and_json_name_the_damage(cdp_server: Any,
                                                       stored: dict[str, Any]) -> None:
    points: list[Point] = stored["points"]
    chunk = sorted(points[-1].chunks)[0]
    path, offset, _ = locate(cdp_server.data_dir, "chunks", chunk)
    with open(path, "r+b") as f:
        f.seek(offset + fmt.BLOB_HEADER_SIZE)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    cdp_server.stop()
    out = subprocess.run([sys.executable, "-m", "cdp_server", "verify", "--data",
                          str(cdp_server.data_dir), "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 4, out.stderr
    doc = json.loads(out.stdout)
    assert doc["damaged_chunks"] == [chunk.hex()]
    assert {(r["point_id"], r["volume"], r["offset"], r["length"]) for r in doc["ranges"]} \
        == expected_ranges(points, chunk)
