"""`cdp-demo`: the product end to end on one machine, driving the real commands.

1. a sample disk image (GPT: an EFI system partition, an ext4 partition full of files);
2. a CDP server (`cdp-server init/cert/host add/serve`) on 127.0.0.1 over HTTPS;
3. the agent (`cdp-agent init`, then `cdp-agent backup` three times while files change);
4. the rescue engine (`rescue restore`) puts the second point, chosen by its time, onto a
   blank, larger image;
5. checks: every partition byte for byte, partition GUIDs, the files of that moment, fsck.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import requests

from cdpcore.api import API_PREFIX
from cdpcore.runcmd import run_json

from .sample import MIB, SampleDisk, make_sample_disk, sha256

BIN = Path(sys.executable).parent
PASSPHRASE = "demo passphrase, keep it safe"


def step(text: str) -> None:
    click.secho(f"\n== {text}", bold=True)


def tool(name: str, *args: str, as_json: bool = True) -> Any:
    argv = [str(BIN / name), *args] + (["--json"] if as_json else [])
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise click.ClickException(f"{name} {' '.join(args)} failed ({proc.returncode}):\n"
                                   f"{proc.stderr.strip()}")
    return json.loads(proc.stdout) if as_json else proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(work: Path) -> tuple[subprocess.Popen[bytes], str, dict[str, Any], str]:
    data = work / "datastore"
    admin = tool("cdp-server", "init", "--data", str(data))
    cert = tool("cdp-server", "cert", "--out", str(work / "tls"))
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    log = open(work / "server.log", "wb")  # noqa: SIM115 - the server process holds it
    proc = subprocess.Popen([str(BIN / "cdp-server"), "serve", "--data", str(data), "--listen",
                             f"127.0.0.1:{port}", "--cert", cert["cert"], "--key", cert["key"]],
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}{API_PREFIX}/health", verify=cert["cert"], timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise click.ClickException("cdp-server did not start:\n"
                                       + (work / "server.log").read_text()[-2000:])
        time.sleep(0.1)
    click.echo(f"cdp-server listening on {url} (datastore {data}, "
               f"certificate fingerprint {cert['fingerprint'][:23]}…)")
    return proc, url, cert, admin["admin_token"]


def gpt_guids(image: Path) -> dict[str, Any]:
    table = run_json(["sfdisk", "--json", str(image)])["partitiontable"]
    return {"disk": table["id"].lower(),
            "partitions": [(p["uuid"].lower(), p["type"].lower(), p.get("name"))
                           for p in table["partitions"]]}


def take_point(config: Path, label: str) -> dict[str, Any]:
    started = time.monotonic()
    point: dict[str, Any] = tool("cdp-agent", "backup", "--config", str(config))
    stats = point.get("stats", {})
    click.echo(f"point {point['point_id'][:12]}  {label:<38} "
               f"changed {stats.get('changed_bytes', 0) / MIB:7.2f} MiB, "
               f"uploaded {stats.get('new_bytes', 0) / MIB:7.2f} MiB "
               f"in {time.monotonic() - started:.1f} s")
    time.sleep(1.2)  # points at least a second apart, so each has its own time to choose
    return point


def protect(sample: SampleDisk, work: Path, url: str, cert: dict[str, Any],
            tokens: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    config = work / "agent.toml"
    tool("cdp-agent", "init", "--server", url, "--token", tokens["agent"], "--host", "web1",
         "--passphrase", PASSPHRASE, "--ca", cert["cert"], "--source", str(sample.path),
         "--state-dir", str(work / "agent-state"), "--config", str(config), as_json=False)
    rng = random.Random(7)
    points = [take_point(config, "first point: full copy")]
    db = rng.randbytes(3 * MIB)
    sample.write_file("db.sqlite", db)
    sample.write_file("notes.txt", b"written between point 1 and point 2\n")
    points.append(take_point(config, "after a database rewrite and a new file"))
    chosen = {"point": points[-1], "disk": sample.path.read_bytes(),
              "files": {"db.sqlite": db, "notes.txt": b"written between point 1 and point 2\n"}}
    sample.write_file("db.sqlite", rng.randbytes(3 * MIB))
    sample.write_file("notes.txt", b"this change comes after the chosen point\n")
    points.append(take_point(config, "after more changes (the latest point)"))
    return points, chosen


def restore(sample: SampleDisk, work: Path, url: str, cert: dict[str, Any],
            tokens: dict[str, str], point: dict[str, Any]) -> tuple[Path, str, float]:
    target = work / "new-disk.img"
    with open(target, "wb") as f:
        f.truncate(384 * MIB)  # a blank, larger disk
    passfile = work / "passphrase"
    passfile.write_text(PASSPHRASE)
    passfile.chmod(0o600)
    when = datetime.fromtimestamp(math.ceil(point["created"])).strftime("%Y-%m-%d %H:%M:%S")
    started = time.monotonic()
    report = tool("rescue", "restore", "--server", url, "--token", tokens["restore"],
                  "--host", "web1", "--ca", cert["cert"], "--point", when,
                  "--map", f"{sample.path.name}={target}", "--passphrase-file", str(passfile),
                  "--verify", "read-back", "--yes")
    return target, when, time.monotonic() - started if report else 0.0


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to put images and the datastore (default: a new temporary folder).")
@click.option("--keep", is_flag=True, help="Keep the working folder afterwards.")
def main(workdir: Path | None, keep: bool) -> None:
    """Protect a sample disk image continuously, then restore an earlier recovery point
    onto a blank, larger disk image and prove it is exact."""
    work = workdir or Path(tempfile.mkdtemp(prefix="cdp-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        step("1. A sample server disk")
        sample = make_sample_disk(work)
        click.echo(f"{sample.path}: {sample.path.stat().st_size // MIB} MiB, GPT, "
                   f"EFI system partition ({sample.esp_size // MIB} MiB, vfat) and data "
                   f"partition ({sample.data_size // MIB} MiB, ext4 with logs, binaries, "
                   "a duplicate and a database)")
        step("2. A CDP server with embedded storage")
        server, url, cert, _admin = start_server(work)
        tokens = tool("cdp-server", "host", "add", "web1", "--data", str(work / "datastore"))
        tokens = tokens.get("tokens", tokens)
        click.echo("enrolled host web1 (agent and restore tokens issued)")
        step("3. The agent takes recovery points while the disk changes")
        points, chosen = protect(sample, work, url, cert, tokens)
        step("4. Disaster: restore the second point, chosen by its time, onto a blank disk")
        target, when, seconds = restore(sample, work, url, cert, tokens, chosen["point"])
        click.echo(f"restored the newest point at or before {when} onto {target} "
                   f"({target.stat().st_size // MIB} MiB) in {seconds:.1f} s")
        step("5. Checks")
        original = work / "at-point-2.img"
        original.write_bytes(chosen["disk"])
        checks = []
        for number in (1, 2):
            same = sha256(sample.partition_bytes(number, original)) == sha256(
                sample.partition_bytes(number, target))
            checks.append((f"partition {number} identical byte for byte", same))
        checks.append(("partition table GUIDs, types and names preserved",
                       gpt_guids(original) == gpt_guids(target)))
        for name, data in chosen["files"].items():
            checks.append((f"/{name} as it was at point 2",
                           sample.read_file(name, target) == data))
        with tempfile.NamedTemporaryFile(dir=work) as fs:
            fs.write(sample.partition_bytes(2, target))
            fs.flush()
            fsck = subprocess.run(["e2fsck", "-fn", fs.name], capture_output=True)
        checks.append(("e2fsck -fn on the restored ext4: clean", fsck.returncode == 0))
        for text, ok in checks:
            click.echo(f"  [{'ok' if ok else 'FAILED'}] {text}")
        if not all(ok for _, ok in checks):
            raise click.ClickException("the restored disk differs from the chosen point")
        click.secho(f"\nDemo complete: {len(points)} recovery points; point 2 restored exactly.",
                    fg="green", bold=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if keep or workdir:
            click.echo(f"working folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
