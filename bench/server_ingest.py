"""Benchmark of the CDP server over HTTPS on loopback (not a test: prints figures).

1. Ingest: upload pre-sealed 16 KiB chunks with several client threads, report MB/s and
   chunks/s (sealing happens before the clock starts: this measures the server's side).
2. Listing: 100,000 points of one host (a year of points every 5 minutes), timed through
   GET /hosts/{host}/points from the client and as the server logs it.

    .venv/bin/python bench/server_ingest.py [--mib 256] [--workers 4] [--points 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from cdp_server.catalog import PointRow
from cdp_server.sqlite_catalog import SqliteCatalog
from cdpcore import format as fmt
from cdpcore.api import API_PREFIX, ObjectKind, PointStats, Role
from cdpcore.client import CdpClient
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import new_master_key

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "cdp_server", *args, "--json"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    doc: dict[str, str] = json.loads(out.stdout)
    return doc


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _blocks(mib: int, codec: BlobCodec) -> list[tuple[bytes, bytes]]:
    """Half-compressible blocks, like typical disk content."""
    out = []
    for _ in range(mib * 1024 * 1024 // fmt.DEFAULT_BLOCK_SIZE):
        half = fmt.DEFAULT_BLOCK_SIZE // 2
        cid, blob = codec.seal_block(os.urandom(half) + bytes(half - 8) + os.urandom(8))
        assert blob is not None
        out.append((cid, blob))
    return out


def _raw_get(url: str, token: str, ca: str) -> tuple[requests.Response, float]:
    """The listing through requests as every client sends it (Accept-Encoding: gzip)."""
    start = time.perf_counter()
    resp = requests.get(url + API_PREFIX + "/hosts/bench/points",
                        headers={"Authorization": f"Bearer {token}"}, verify=ca, timeout=60)
    resp.raise_for_status()
    return resp, time.perf_counter() - start


def _server_ms(work: Path) -> list[float]:
    """Durations of the listing requests as the server logged them, in order."""
    return [json.loads(line)["ms"] for line in (work / "server.log").read_text().splitlines()
            if '"path": "/api/v1/hosts/bench/points"' in line]


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all threads: less disturbed by other load
    on the machine than wall-clock time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wire(resp: requests.Response) -> str:
    sent = resp.headers.get("Content-Length")
    encoding = resp.headers.get("Content-Encoding", "identity")
    return f"{int(sent) / 2**20:.1f} MiB {encoding}" if sent else encoding


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="volume of plaintext to ingest")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1024, help="chunks per upload request")
    ap.add_argument("--points", type=int, default=100_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cdp-bench-"))
    cert = _cli("cert", "--out", str(work / "cert"))
    admin_token = _cli("init", "--data", str(work / "ds"))["admin_token"]
    port = _port()
    log = open(work / "server.log", "wb")  # noqa: SIM115 - held by the child
    proc = subprocess.Popen([sys.executable, "-m", "cdp_server", "serve", "--data",
                             str(work / "ds"), "--listen", f"127.0.0.1:{port}", "--cert",
                             cert["cert"], "--key", cert["key"]], cwd=REPO, stdout=log,
                            stderr=log)
    url = f"https://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(url + API_PREFIX + "/health", verify=cert["cert"],
                                timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        admin = CdpClient(url, admin_token, ca_path=cert["cert"])
        token = admin.create_host("bench").tokens[Role.agent]
        agent = CdpClient(url, token, ca_path=cert["cert"])
        codec = BlobCodec(KeySet.from_master(new_master_key()))
        print(f"sealing {args.mib} MiB of 16 KiB blocks ...", flush=True)
        items = _blocks(args.mib, codec)
        blob_bytes = sum(len(b) for _, b in items)
        batches = [items[i:i + args.batch] for i in range(0, len(items), args.batch)]

        start = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            missing = list(pool.map(lambda b: agent.missing("bench", ObjectKind.chunks,
                                                            [i for i, _ in b]), batches))
        t_missing = time.perf_counter() - start
        assert sum(len(m) for m in missing) == len(items)

        start, cpu = time.perf_counter(), _cpu_seconds(proc.pid)
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(lambda b: agent.upload("bench", ObjectKind.chunks, b),
                                    batches))
        t_upload = time.perf_counter() - start
        cpu = _cpu_seconds(proc.pid) - cpu
        assert sum(r.stored for r in results) == len(items)
        print(f"missing: {len(items)} IDs in {t_missing:.2f} s "
              f"({len(items) / t_missing:,.0f} IDs/s)")
        print(f"ingest: {len(items)} chunks, {blob_bytes / 2**20:.1f} MiB of blobs "
              f"({args.mib} MiB plaintext) in {t_upload:.2f} s: "
              f"{blob_bytes / 2**20 / t_upload:.1f} MiB/s blobs, "
              f"{args.mib / t_upload:.1f} MiB/s plaintext, {len(items) / t_upload:,.0f} "
              f"chunks/s ({args.workers} client threads, {args.batch} chunks/request); "
              f"server CPU {cpu:.2f} s ({cpu / (blob_bytes / 2**30):.1f} s per GiB of blobs)")

        print(f"inserting {args.points:,} points into the catalog ...", flush=True)
        catalog = SqliteCatalog(work / "ds" / "catalog.sqlite")
        stats = PointStats(changed_bytes=123456, new_chunks=10).model_dump_json()
        vols = json.dumps([{"name": "vda", "size": 2**30, "block_size": 16384,
                            "root": "00" * 32, "height": 1}])
        t0 = time.time() - args.points * 300
        rows = [PointRow(host="bench", point_id=f"{i:032x}", created=t0 + i * 300,
                         committed=t0 + i * 300 + 5, parent=None, size=2**30, stats=stats,
                         pinned=False, verify="unverified", volumes=vols, manifest="AAAA",
                         digest="x") for i in range(args.points)]
        with catalog.write() as db:  # one transaction: the API would commit them one by one
            db.executemany("INSERT INTO points(host, point_id, created, committed, parent, "
                           "size, stats, pinned, verify, volumes, manifest, digest, head) "
                           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", [
                (r.host, r.point_id, r.created, r.committed, r.parent, r.size, r.stats,
                 0, r.verify, r.volumes, r.manifest, r.digest, r.head()) for r in rows])
        times = []
        for _ in range(5):
            start = time.perf_counter()
            listed = agent.points("bench")
            times.append(time.perf_counter() - start)
        assert len(listed) == args.points
        resp, raw = _raw_get(url, token, cert["cert"])
        server_ms = _server_ms(work)
        print(f"list {args.points:,} points: server {server_ms[0]:.1f} ms first (rendered "
              f"by SQLite), {min(server_ms[1:]):.1f} ms best of {len(server_ms) - 1} after "
              f"(cached until the host's points change), both including sending "
              f"{len(resp.content) / 2**20:.1f} MiB of JSON as {_wire(resp)}; raw HTTPS GET "
              f"measured by the client {raw * 1000:.1f} ms; client with PointInfo parsing "
              f"{min(times) * 1000:.0f} ms")
        # A change through the API (as a commit would be): the server renders the listing
        # again in the background, so a GET a moment later finds it ready.
        admin.pin("bench", rows[-1].point_id)
        time.sleep(1)
        resp, raw = _raw_get(url, token, cert["cert"])
        assert resp.json()[-1]["pinned"] is True
        later = _server_ms(work)[-1]
        admin.unpin("bench", rows[-1].point_id)
        resp, raw_now = _raw_get(url, token, cert["cert"])
        assert resp.json()[-1]["pinned"] is False
        print(f"list after a pin: server {later:.1f} ms (GET 1 s after the pin), "
              f"{_server_ms(work)[-1]:.1f} ms (GET right after an unpin: waits for the "
              f"refresh under way); client {raw * 1000:.1f} ms and {raw_now * 1000:.1f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        shutil.rmtree(work)  # a run leaves about 200 MB of packs and catalog


if __name__ == "__main__":
    main()
