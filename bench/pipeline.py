"""Block pipeline micro-benchmark (issue #2): chunk ID + compress + encrypt ("seal"), and
decrypt + decompress + ID check ("open"), through cdpcore's BlobCodec, beside the same
primitives called back to back without any of the project's code; on one core, and on
every core with threads and with processes. Also, on one core, the two chunk-ID schemes:
keyed BLAKE3 (format version 2) and HMAC-SHA256 (version 1).

    .venv/bin/python -m bench.pipeline [--mib 256] [--json]
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import blake3
import click
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cdpcore import format as fmt
from cdpcore.crypto import BlobCodec, ChunkIds, KeySet

MASTER = bytes(range(64))  # a fixed key: this is a benchmark
_BATCH = 256
_NONCE = bytes(12)  # the bare-primitive baseline reuses one nonce; never do this for real


def make_blocks(mib: int, block_size: int) -> list[bytes]:
    """Deterministic mix: half compressible text-like blocks, half incompressible."""
    text = b"".join(b"line %08d: the quick brown fox jumps over the lazy dog\n" % i
                    for i in range(block_size // 40 + 1))
    count = mib * 1024 * 1024 // block_size
    return [hashlib.shake_256(i.to_bytes(8, "big")).digest(block_size) if i % 2
            else text[i % 97:i % 97 + block_size] for i in range(count)]


class Workload:
    """The four operations, each a function of one plaintext block. Built per process."""

    def __init__(self) -> None:
        self.keys = KeySet.from_master(MASTER)
        self.codec = BlobCodec(self.keys)
        self.aead = AESGCM(self.keys.enc_key)
        self.v1_keys = self.codec.with_chunk_ids(ChunkIds.HMAC_SHA256).keys
        self.sealed: dict[bytes, tuple[bytes, bytes | None]] = {}
        self.raw_sealed: dict[bytes, bytes] = {}
        # the primitives at their best: one zstd context per thread, reused
        self.zstd = threading.local()

    def prepare(self, blocks: list[bytes]) -> None:
        self.sealed = {b: self.codec.seal_block(b) for b in blocks}
        self.raw_sealed = {b: self.raw_seal(b) for b in blocks}

    def seal(self, block: bytes) -> object:
        return self.codec.seal_block(block)

    def chunk_id(self, block: bytes) -> bytes:
        return self.keys.chunk_id(block)

    def chunk_id_v1(self, block: bytes) -> bytes:
        return self.v1_keys.chunk_id(block)

    def raw_seal(self, block: bytes) -> bytes:
        # Keyed with id_key itself: the product derives its BLAKE3 key once per key set
        # (docs/FORMAT.md), which costs nothing per block.
        chunk_id = blake3.blake3(block, key=self.keys.id_key).digest()
        body = self._ctx("cctx", lambda: zstandard.ZstdCompressor(level=fmt.ZSTD_LEVEL)
                         ).compress(block)
        return self.aead.encrypt(_NONCE, body if len(body) < len(block) else block, chunk_id)

    def _ctx(self, name: str, make: Callable[[], Any]) -> Any:
        ctx = getattr(self.zstd, name, None)
        if ctx is None:
            ctx = make()
            setattr(self.zstd, name, ctx)
        return ctx

    def open(self, block: bytes) -> bytes:
        chunk_id, blob = self.sealed[block]
        assert blob is not None
        return self.codec.open_block(chunk_id, blob)

    def raw_open(self, block: bytes) -> bytes:
        chunk_id = blake3.blake3(block, key=self.keys.id_key).digest()  # the ID check's cost
        body = self.aead.decrypt(_NONCE, self.raw_sealed[block], chunk_id)
        if len(body) < len(block):
            body = self._ctx("dctx", zstandard.ZstdDecompressor).decompress(
                body, max_output_size=len(block))
        return body


_worker: Workload | None = None


def _init_worker(blocks: list[bytes]) -> None:
    global _worker
    _worker = Workload()
    _worker.prepare(blocks)


def _run_batch(op: str, batch: list[bytes]) -> int:
    assert _worker is not None
    fn: Callable[[bytes], object] = getattr(_worker, op)
    for block in batch:
        fn(block)
    return len(batch)


def timed(op: str, blocks: list[bytes], pool: Executor | None) -> float:
    """Best of 3 seconds to push every block through `op` (batches per task, as the agent
    and restore pipelines do: one task per block would measure the executor instead)."""
    batches = [blocks[i:i + _BATCH] for i in range(0, len(blocks), _BATCH)]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        if pool is None:
            _run_batch(op, blocks)
        else:
            list(pool.map(_run_batch, [op] * len(batches), batches))
        best = min(best, time.perf_counter() - start)
    return best


def measure(mib: int, block_size: int) -> dict[str, object]:
    blocks = make_blocks(mib, block_size)
    total = sum(len(b) for b in blocks)
    _init_worker(blocks)
    cores = os.cpu_count() or 1
    results: dict[str, object] = {
        "block_size": block_size, "mib": mib, "cores": cores,
        "machine": f"{platform.machine()}, {cores} cores", "python": platform.python_version(),
    }
    with ThreadPoolExecutor(cores) as threads, ProcessPoolExecutor(
            cores, initializer=_init_worker, initargs=(blocks,)) as processes:
        for setting, pool in (("1 core", None), (f"{cores} threads", threads),
                              (f"{cores} processes", processes)):
            for op in ("seal", "open"):
                t_project = timed(op, blocks, pool)
                t_raw = timed("raw_" + op, blocks, pool)
                results[f"{op}, {setting}"] = {
                    "project_mb_s": round(total / t_project / 1e6, 1),
                    "primitives_mb_s": round(total / t_raw / 1e6, 1),
                    "overhead_pct": round((t_project / t_raw - 1) * 100, 1),
                }
    results["hash, 1 core"] = {
        "blake3_id_mb_s": round(total / timed("chunk_id", blocks, None) / 1e6, 1),
        "hmac_id_mb_s": round(total / timed("chunk_id_v1", blocks, None) / 1e6, 1),
    }
    return results


@click.command()
@click.option("--mib", default=256, show_default=True, help="Data pushed through the pipeline.")
@click.option("--block-size", default=fmt.DEFAULT_BLOCK_SIZE, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(mib: int, block_size: int, as_json: bool) -> None:
    """Measure the block pipeline against the bare primitives."""
    results = measure(mib, block_size)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    click.echo(f"block pipeline: {mib} MiB of {block_size}-byte blocks (half compressible), "
               f"{results['machine']}, Python {results['python']}")
    click.echo(f"{'':24}{'project MB/s':>14}{'primitives MB/s':>17}{'overhead':>10}")
    hashes = results.pop("hash, 1 core")
    for key, row in results.items():
        if isinstance(row, dict):
            click.echo(f"{key:24}{row['project_mb_s']:>14}{row['primitives_mb_s']:>17}"
                       f"{row['overhead_pct']:>9}%")
    assert isinstance(hashes, dict)
    click.echo(f"chunk IDs, 1 core: keyed BLAKE3 (version 2) {hashes['blake3_id_mb_s']} MB/s, "
               f"HMAC-SHA256 (version 1) {hashes['hmac_id_mb_s']} MB/s")


if __name__ == "__main__":
    main()
