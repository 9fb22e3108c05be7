"""Choosing the block size by measurement (issue #2, docs/FORMAT.md "Blocks"): the real
agent against a real `cdp-server` on loopback, once per block size, on the benchmark's
workload image and change (bench.workload: scattered 4 KiB writes of a database plus a
sequential log run).

Small blocks keep a scattered 4 KiB write from multiplying into a large upload; large
blocks keep the per-block costs low (an index entry, a blob header, a catalog row, a
hash and a seal call each). The sweep prints both sides for each size: full backup time
and CPU, repository size, the incremental's upload and repository growth as multiples of
the bytes that changed, and the index bytes a point writes.

    .venv/bin/python -m bench.blocksize [--size 512M] [--sizes 4K,8K,16K,32K,64K,128K]
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import click

from cdpcore.api import Role
from cdpcore.client import CdpClient
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import new_master_key
from hotcopy.backup import backup

from .measure import dir_size, drop_caches, machine
from .ours import HOST, Server
from .workload import apply_change, build_image, copy_sparse, diff_images, parse_size, plan_change


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (the sealing workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(work: Path, image: Path, changed: Path, block_size: int) -> dict[str, Any]:
    root = work / f"bs{block_size}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    server = Server(root / "server")
    server.root.mkdir()
    server.start(work / "certs")
    try:
        client = CdpClient(server.url, server.tokens[Role.agent], ca_path=server.ca)
        codec = BlobCodec(KeySet.from_master(new_master_key()))
        disk = root / "disk.img"
        copy_sparse(image, disk)
        out: dict[str, Any] = {"block_size": block_size}
        for step, source in (("full", image), ("incremental", changed)):
            if step == "incremental":
                shutil.copyfile(source, disk)  # the change lands in place
            before_repo, before_cpu, server_cpu = dir_size(server.data), _cpu(), server.cpu()
            drop_caches()
            start = time.monotonic()
            info = backup(client, HOST, codec, [str(disk)], root / "state",
                          block_size=block_size)
            out[step] = {
                "wall_s": time.monotonic() - start,
                "cpu_s": _cpu() - before_cpu + server.cpu() - server_cpu,
                "sent_bytes": info.stats.new_bytes,
                "repo_growth": dir_size(server.data).apparent - before_repo.apparent,
                "changed_bytes": info.stats.changed_bytes,
            }
        out["repo_bytes"] = dir_size(server.data).apparent
        return out
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def render(doc: dict[str, Any]) -> str:
    changed = doc["changed_bytes"]
    lines = [
        f"Block size sweep: {doc['size'] >> 20} MiB workload image, change of "
        f"{changed / 2**20:.1f} MiB ({changed} bytes differ); `{doc['command']}`",
        "",
        "| block | full backup | full CPU | repository | incremental | incr. CPU "
        "| sent / changed | growth / changed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        full, inc = r["full"], r["incremental"]
        lines.append(
            f"| {r['block_size'] // 1024} KiB | {full['wall_s']:.2f} s | {full['cpu_s']:.2f} s "
            f"| {r['repo_bytes'] / 2**20:.1f} MiB | {inc['wall_s']:.2f} s | {inc['cpu_s']:.2f} s "
            f"| {inc['sent_bytes'] / changed:.2f} x | {inc['repo_growth'] / changed:.2f} x |")
    return "\n".join(lines)


@click.command()
@click.option("--size", default="512M", show_default=True, help="Workload image size.")
@click.option("--sizes", default="4K,8K,16K,32K,64K,128K", show_default=True,
              help="Block sizes to try, comma-separated.")
@click.option("--work", default="/var/tmp/cdp-bench/blocksize", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--json", "json_path", help="Also write the JSON document here.")
def main(size: str, sizes: str, work: str, json_path: str | None) -> None:
    """Measure the block-size trade-off with the real agent and server."""
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    nbytes = parse_size(size)
    workload = build_image(work_dir / "base.img", nbytes)
    changed = work_dir / "changed.img"
    copy_sparse(workload.image, changed)
    apply_change(changed, plan_change(changed, workload))
    doc = {"size": nbytes, "machine": machine(),
           "changed_bytes": diff_images(workload.image, changed).bytes,
           "command": f"python -m bench.blocksize --size {size} --sizes {sizes}",
           "results": [measure(work_dir, Path(workload.image), changed, parse_size(s))
                       for s in sizes.split(",")]}
    if json_path:
        Path(json_path).write_text(json.dumps(doc, indent=2))
    click.echo(render(doc))


if __name__ == "__main__":
    main()
