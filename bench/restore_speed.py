"""Restore throughput of the rescue engine (issue #5), beside the raw limit.

Makes an image of --mib MiB (half random, half compressible but unique per block, plus a
zero tail), takes a point of it with the agent (hotcopy.backup) into a real `cdp-server`
process on 127.0.0.1, then times `rescue restore` of that point onto an image file (a
measured process, sync included) with one worker process and with the default (two per
core), and `dd` copying the same bytes from a local file (conv=fsync). Both restores
are checked byte for byte against the image.

    .venv/bin/python -m bench.restore_speed [--mib 1024] [--json] [--workdir DIR]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from cdpcore.client import CdpClient
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import WrappedKey, new_master_key
from hotcopy.backup import backup

from .measure import evict, machine, same_bytes
from .ours import HOST, Server

MIB = 1024 * 1024
PASSPHRASE = "bench passphrase"


def make_image(path: Path, mib: int) -> None:
    """Random first half (incompressible), compressible second half (text-like lines that
    differ per block, so nothing deduplicates), the last 1/16 all zeros."""
    rnd_mib, zero_mib = mib // 2, mib // 16
    with open(path, "wb") as f:
        for _ in range(rnd_mib):
            f.write(os.urandom(MIB))
        for i in range((mib - rnd_mib - zero_mib) * MIB // 4096):
            line = f"{i:012d} the quick brown fox jumps over the lazy dog {i * 7919:x}\n"
            f.write((line * (4096 // len(line) + 1)).encode()[:4096])
        f.truncate(mib * MIB)


def timed(argv: list[str], cwd: Path | None = None) -> dict[str, float]:
    """Wall and CPU seconds of a child process, a final sync included in the wall time
    (the restore's page-cache write-back belongs to its time, as dd's conv=fsync does)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    os.sync()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def figures(nbytes: int, t: dict[str, float]) -> dict[str, float]:
    return {"seconds": round(t["wall"], 2), "MiB_per_s": round(nbytes / MIB / t["wall"], 1),
            "cpu_seconds": round(t["cpu"], 2)}


def run(work: Path, mib: int, cold: bool) -> dict[str, Any]:
    image, certs = work / "disk.img", work / "certs"
    certs.mkdir(exist_ok=True)
    make_image(image, mib)
    server = Server(work / "server")
    server.root.mkdir(exist_ok=True)
    server.start(certs)
    try:
        client = CdpClient(server.url, server.tokens["agent"], ca_path=server.ca)
        master = new_master_key()
        client.put_key(HOST, WrappedKey.create(master, PASSPHRASE).to_json())
        backup(client, HOST, BlobCodec(KeySet.from_master(master)), [str(image)],
               work / "agent-state")
        (work / "pass").write_text(PASSPHRASE)
        results: dict[str, Any] = {}
        for label, workers in (("rescue restore, 1 worker", ["--workers", "1"]),
                               ("rescue restore, default workers", [])):
            target = work / "restored.img"
            with open(target, "wb") as f:  # a fresh, sparse target of the image's size
                f.truncate(mib * MIB)
            if cold:
                evict(image, server.data)
            server_cpu = server.cpu()
            took = timed([sys.executable, "-m", "rescue", "restore",
                            "--server", server.url, "--ca", server.ca,
                            "--token", server.tokens["restore"], "--host", HOST,
                            "--map", f"{image.name}={target}", "--passphrase-file",
                            str(work / "pass"), "--yes", "--state-dir", str(work / "st"),
                          *workers], cwd=Path(__file__).resolve().parent.parent)
            if not same_bytes(image, target):
                raise SystemExit(f"{label}: the restored image differs from the source")
            results[label] = {**figures(mib * MIB, took),
                              "server_cpu_seconds": round(server.cpu() - server_cpu, 2)}
        copy = work / "dd.img"
        if cold:
            evict(image)
        results["dd (raw limit)"] = figures(mib * MIB, timed(
            ["dd", f"if={image}", f"of={copy}", "bs=4M", "conv=fsync"]))
        return {"image_mib": mib, "cold": cold, "machine": machine(), "results": results}
    finally:
        server.stop()


@click.command()
@click.option("--mib", type=click.IntRange(16), default=1024, show_default=True,
              help="image size in MiB")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="directory for the image, datastore and restores (default: a temporary "
              "directory, removed afterwards)")
@click.option("--cold/--warm", default=True, show_default=True,
              help="evict the image and the datastore from the page cache before each run")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def main(mib: int, workdir: Path | None, cold: bool, as_json: bool) -> None:
    """Measure `rescue restore` MiB/s beside dd of the same bytes."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        doc = run(workdir, mib, cold)
    else:
        with tempfile.TemporaryDirectory(prefix="restore-speed-") as tmp:
            doc = run(Path(tmp), mib, cold)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    for label, r in doc["results"].items():
        server = (f", server cpu {r['server_cpu_seconds']:.1f} s"
                  if "server_cpu_seconds" in r else "")
        click.echo(f"{label:34} {r['seconds']:8.2f} s {r['MiB_per_s']:8.1f} MiB/s "
                   f"(cpu {r['cpu_seconds']:.1f} s{server})")


if __name__ == "__main__":
    main()
