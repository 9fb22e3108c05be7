"""One step of this project, run as its own process so GNU time measures it alone: a
backup through the agent's library entry point (`hotcopy.backup.backup`), or a restore of
the newest point to an image file through the rescue engine's streaming path
(`rescue.repo.Repository` + `rescue.stream.stream_volume`).

    python -m bench.agent_run backup SETTINGS.json IMAGE [--changed RANGES.json]
    python -m bench.agent_run restore SETTINGS.json DEST
    python -m bench.agent_run resident SETTINGS.json IMAGE

`resident` takes a point for each line read from stdin (empty, or the path of a
RANGES.json), as one long-lived process, the way `cdp-agent run` takes its points, and
answers each with a JSON line of its stats, wall time and CPU time (workers included).

SETTINGS.json: {"url", "token", "ca", "host", "master_hex", "state_dir"}, and optionally
"compression_level" (the agent's zstd level). With
CDP_BENCH_LOG=info the agent's log (per-phase times of each point) goes to stderr.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import click

from cdpcore import format as fmt
from cdpcore.client import CdpClient
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.errors import UsageError


def _client(s: dict[str, Any]) -> CdpClient:
    return CdpClient(s["url"], s["token"], ca_path=s["ca"])


def _codec(s: dict[str, Any]) -> BlobCodec:
    return BlobCodec(KeySet.from_master(bytes.fromhex(s["master_hex"])),
                     s.get("compression_level", fmt.ZSTD_LEVEL))


def tracking_parameter() -> str | None:
    """The name of the agent's input for an exact list of changed byte ranges, if its
    backup() has one (issue #9 asks for "tracking" runs given that list)."""
    from hotcopy.backup import backup

    params = inspect.signature(backup).parameters
    return next((p for p in ("changed", "changed_ranges") if p in params), None)


@click.group()
def main() -> None:
    """Measured steps of this project for the benchmark."""
    logging.basicConfig(level=os.environ.get("CDP_BENCH_LOG", "warning").upper())


@main.command()
@click.argument("settings", type=click.Path(exists=True, dir_okay=False))
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--changed", type=click.Path(exists=True, dir_okay=False),
              help="JSON list of [offset, length] byte ranges changed since the last point.")
def backup(settings: str, image: str, changed: str | None) -> None:
    from hotcopy.backup import backup as take_point

    s = json.loads(Path(settings).read_text())
    info = take_point(_client(s), s["host"], _codec(s), [image], s["state_dir"],
                      **_changed(image, changed))
    click.echo(json.dumps(info.stats.model_dump()))


def _changed(image: str, changed: str | None) -> dict[str, Any]:
    """backup()'s keyword for the list of changed ranges in the file `changed`, if any."""
    if not changed:
        return {}
    name = tracking_parameter()
    if name is None:
        raise UsageError("this agent takes no list of changed ranges")
    return {name: {image: [tuple(r) for r in json.loads(Path(changed).read_text())]}}


def _cpu_seconds() -> float:
    """This process's CPU time and that of its reaped children (the sealing workers)."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                  resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@main.command()
@click.argument("settings", type=click.Path(exists=True, dir_okay=False))
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
def resident(settings: str, image: str) -> None:
    from hotcopy.backup import backup as take_point

    s = json.loads(Path(settings).read_text())
    client, codec = _client(s), _codec(s)
    for line in sys.stdin:
        kwargs = _changed(image, line.strip() or None)
        cpu, start = _cpu_seconds(), time.perf_counter()
        info = take_point(client, s["host"], codec, [image], s["state_dir"], **kwargs)
        wall = time.perf_counter() - start
        click.echo(json.dumps({"stats": info.stats.model_dump(), "wall": wall,
                               "cpu": _cpu_seconds() - cpu}))


@main.command()
@click.argument("settings", type=click.Path(exists=True, dir_okay=False))
@click.argument("dest", type=click.Path(dir_okay=False))
def restore(settings: str, dest: str) -> None:
    from rescue.repo import Repository
    from rescue.stream import stream_volume
    from rescue.target import Target

    s = json.loads(Path(settings).read_text())
    repo = Repository(_client(s), s["host"], _codec(s))
    point = repo.open_point(repo.choose("latest").point_id)
    volumes = point.manifest.volumes
    if len(volumes) != 1:
        raise UsageError(f"expected one volume (a plain image), the point has {len(volumes)}")
    vol = volumes[0]
    with open(dest, "wb") as f:
        f.truncate(vol.size)
    with Target(dest) as target:
        result = stream_volume(repo.client, s["host"], point.codec, vol, target, 0)
        target.sync()
    click.echo(json.dumps({"written": result.written, "zeroed": result.zeroed}))


if __name__ == "__main__":
    main()
