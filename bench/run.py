"""The side-by-side benchmark of issue #9: this project, restic, borg and the physical
limit, alternating in one run on the same machine (`make bench`, `python -m bench`).

Per run and per tool: a fresh repository, a full backup of the workload image, the
change applied in place, an incremental backup, the newest point restored to a file and
compared byte for byte with the changed image; for this project's tracking tool also the
same incremental taken by one resident agent process (as `cdp-agent run` takes its points:
no Python start per point). The order of the tools rotates from run to run; the page cache is dropped (or, with --cache evict, only the image and repository
files are evicted from it) before every measured backup and restore. Then, once per
tool: a series of points with light writes in between (storage and CPU per point), and for
this project the cost of a point with nothing changed on a large sparse volume.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdpcore import format as fmt
from cdpcore.errors import CdpError

from . import report, workload
from .measure import Sample, cold, machine, same_bytes
from .ours import CdpTool
from .peers import Tool, copy_limit, read_limit, start_floor, write_floor
from .workload import MiB, Write

log = logging.getLogger("cdp.bench")


@dataclass
class Settings:
    size: int = 2 * workload.GiB
    runs: int = 3
    seed: int = 9
    series_size: int = 256 * MiB
    series_points: int = 60
    empty_size: int = 1 << 40
    work: Path = Path("/var/tmp/cdp-bench")
    cache: str = "drop"  # bench.measure.cold: drop the whole page cache, or evict files


@dataclass
class Prepared:
    """A cached base image, its changed twin and the change between them."""

    work: workload.Workload
    base: Path
    changed: Path
    writes: list[Write]
    diff: workload.Diff

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [(w.offset, len(w.data)) for w in self.writes]


def prepare(directory: Path, size: int, seed: int) -> Prepared:
    """Build (or reuse, when its recorded checksum still matches) the workload image."""
    directory.mkdir(parents=True, exist_ok=True)
    base = directory / f"base-{size}-{seed}.img"
    meta = base.with_suffix(".json")
    work: workload.Workload | None = None
    if base.exists() and meta.exists():
        doc = json.loads(meta.read_text())
        if set(doc) == set(workload.Workload.__dataclass_fields__) and \
                workload.sha256_file(base) == doc["sha256"]:
            work = workload.Workload(**doc)
    if work is None:
        log.info("building a %d MiB workload image", size // MiB)
        work = workload.build_image(base, size, seed)
        meta.write_text(json.dumps(work.to_json()))
    changed = directory / f"changed-{size}-{seed}.img"
    writes = workload.plan_change(base, work)
    workload.copy_sparse(base, changed)
    workload.apply_change(changed, writes)
    return Prepared(work, base, changed, writes, workload.diff_images(base, changed))


def fresh_disk(src: Path, dest: Path) -> None:
    """The "live disk" every tool backs up: fully allocated, like a real one, so reads of
    free space come from the disk and not from holes."""
    dest.unlink(missing_ok=True)
    shutil.copyfile(src, dest)


@dataclass
class Collector:
    raw: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    restores: dict[str, list[bool]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, tool: str, key: str, value: float) -> None:
        self.raw.setdefault(tool, {}).setdefault(key, []).append(value)


def fresh_work(scratch: Path, name: str, prep: Prepared,
               disk_name: str = "disk.img") -> tuple[Path, Path]:
    """An empty work directory `name` under `scratch`, and a fresh copy of the workload's
    base image there."""
    work = scratch / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    disk = scratch / disk_name
    fresh_disk(prep.base, disk)
    return work, disk


def run_tool(tool: Tool, prep: Prepared, scratch: Path, out: Collector,
             cool: Callable[..., object]) -> None:
    work, disk = fresh_work(scratch, tool.name, prep)
    try:
        tool.setup(work)
        cool(disk, work)
        full = tool.backup(disk)
        before = tool.repo()
        workload.apply_change(disk, prep.writes)
        cool(disk, work)
        incr = tool.backup(disk, changed=prep.ranges)
        after = tool.repo()
        cool(disk, work)
        restored, path = tool.restore(work / "restore")
        equal = same_bytes(path, prep.changed)
    finally:
        tool.close()
    server_rss = getattr(tool, "server_rss_kib", 0)  # our server: a second process
    if server_rss:
        out.add(tool.name, "server_rss_mib", server_rss / 1024)
    out.add(tool.name, "full_s", full.wall)
    out.add(tool.name, "full_cpu_s", full.cpu)
    if full.extra_cpu:  # the part of the CPU time our server spent
        out.add(tool.name, "full_server_cpu_s", full.extra_cpu)
        out.add(tool.name, "incr_server_cpu_s", incr.extra_cpu)
    out.add(tool.name, "full_rss_mib", full.rss_kib / 1024)
    out.add(tool.name, "full_repo_mib", before.apparent / MiB)
    out.add(tool.name, "incr_s", incr.wall)
    out.add(tool.name, "incr_cpu_s", incr.cpu)
    out.add(tool.name, "growth_bytes", after.apparent - before.apparent)
    out.add(tool.name, "growth_allocated_bytes", after.allocated - before.allocated)
    out.add(tool.name, "growth_x", (after.apparent - before.apparent) / prep.diff.bytes)
    out.add(tool.name, "restore_s", restored.wall)
    out.restores.setdefault(tool.name, []).append(equal)
    log.info("%s: full %.2f s, incremental %.2f s, growth %.1fx, restore %.2f s, equal %s",
             tool.name, full.wall, incr.wall, (after.apparent - before.apparent)
             / prep.diff.bytes, restored.wall, equal)
    shutil.rmtree(work, ignore_errors=True)


def run_resident(tool: CdpTool, prep: Prepared, scratch: Path, out: Collector,
                 cool: Callable[..., object]) -> None:
    """The incremental in a resident agent, as `cdp-agent run` takes its points: a full
    backup, the change, the incremental (tracked or scanned, as the tool's own), all by
    one agent process, the page cache dropped before the incremental as for every
    measured step (the agent's own modules are loaded by then)."""
    work, disk = fresh_work(scratch, f"{tool.name}-resident", prep)
    try:
        tool.setup(work)
        with tool.resident(disk) as agent:
            agent.backup()
            workload.apply_change(disk, prep.writes)
            cool(disk, work)
            incr = agent.backup(changed=prep.ranges if tool.tracking else None)
    finally:
        tool.close()
    out.add(tool.name, "incr_resident_s", incr.wall)
    out.add(tool.name, "incr_resident_cpu_s", incr.cpu)
    log.info("%s: incremental in a resident agent %.2f s", tool.name, incr.wall)
    shutil.rmtree(work, ignore_errors=True)


def run_limit(prep: Prepared, scratch: Path, out: Collector,
              cool: Callable[..., object]) -> None:
    disk = scratch / "disk.img"
    fresh_disk(prep.changed, disk)
    cool(disk)
    read = read_limit(disk)
    copy = scratch / "limit-copy.img"
    cool(disk)
    written = copy_limit(disk, copy)
    out.add("limit", "full_s", read.wall)
    out.add("limit", "restore_s", written.wall)
    out.restores.setdefault("limit", []).append(same_bytes(copy, prep.changed))
    copy.unlink()
    out.add("limit", "restore_floor_s",
            write_floor(prep.changed, copy, fmt.DEFAULT_BLOCK_SIZE, cool))
    out.add("limit", "start_floor_s", start_floor(cool))


def run_series(tool: Tool, prep: Prepared, scratch: Path, points: int) -> dict[str, float]:
    """A full backup, then `points` points with light writes (16 scattered pages and
    64 KiB of log) before each: storage and CPU per point."""
    work, disk = fresh_work(scratch, f"series-{tool.name}", prep, "series.img")
    samples: list[Sample] = []
    try:
        tool.setup(work)
        tool.backup(disk)
        start = tool.repo().apparent
        for minute in range(points):
            writes = workload.plan_change(disk, prep.work, scattered=16,
                                          sequential=64 * 1024, tag=f"minute-{minute}")
            workload.apply_change(disk, writes)
            samples.append(tool.backup(disk, changed=[(w.offset, len(w.data))
                                                      for w in writes]))
        grown = tool.repo().apparent - start
    finally:
        tool.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"storage_per_point": grown / points,
            "cpu_per_point": sum(s.cpu for s in samples) / points,
            "wall_per_point": sum(s.wall for s in samples) / points}


def benchmark(settings: Settings, tools: list[Tool],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run everything; returns the JSON document (raw samples, summary, targets)."""
    started = time.time()
    scratch = settings.work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    prep = prepare(settings.work, settings.size, settings.seed)
    col = Collector()
    cool = cold(settings.cache)
    for run in range(settings.runs):
        shift = run % (len(tools) + 1)
        order: list[Tool | None] = [*tools, None]  # None: the limit
        for tool in order[shift:] + order[:shift]:
            log.info("run %d/%d: %s", run + 1, settings.runs, tool.name if tool else "limit")
            if tool is None:
                run_limit(prep, scratch, col, cool)
                continue
            try:
                run_tool(tool, prep, scratch, col, cool)
                if isinstance(tool, CdpTool):
                    run_resident(tool, prep, scratch, col, cool)
            except CdpError as exc:  # one failing tool must not cost the others' figures
                log.error("%s failed: %s", tool.name, exc)
                col.errors.append(f"{tool.name}, run {run + 1}: {brief(exc)}")
    doc: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", "bench",
                                                     *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "machine": machine(),
        "runs": settings.runs,
        "cache": settings.cache,
        "workload": {**prep.work.summary(), "changed_bytes": prep.diff.bytes,
                     "changed_blocks": prep.diff.blocks},
        "raw": col.raw,
        "restore_checks": {t: ("yes" if all(v) else "**NO**") for t, v in col.restores.items()},
        **(extra or {}),
    }
    if settings.series_points:
        sprep = prepare(settings.work, settings.series_size, settings.seed)
        series = {}
        for tool in tools:
            log.info("series of %d points: %s", settings.series_points, tool.name)
            try:
                series[tool.name] = run_series(tool, sprep, scratch, settings.series_points)
            except CdpError as exc:
                log.error("%s series failed: %s", tool.name, exc)
                col.errors.append(f"{tool.name}, series: {brief(exc)}")
        doc["series"] = {"points": settings.series_points, "size": settings.series_size,
                         "changed_per_point": 16 * workload.PAGE + 64 * 1024,
                         "tools": series}
    doc["errors"] = col.errors
    shutil.rmtree(scratch, ignore_errors=True)
    doc["duration_s"] = round(time.time() - started, 1)
    return doc


def brief(exc: Exception) -> str:
    """The end of an error message (a failed command's stderr tail says what went wrong)."""
    text = str(exc)
    return text if len(text) <= 400 else "..." + text[-400:]


def finish(doc: dict[str, Any]) -> str:
    """Summarize a benchmark document in place and return its Markdown table."""
    summary = report.summarize(doc["raw"])
    empty = doc.get("empty_point")
    goals = report.targets(summary, None if empty is None else empty["bytes"])
    doc["summary"] = {t: {k: vars(s) for k, s in figs.items()} for t, figs in summary.items()}
    doc["targets"] = [g.to_json() for g in goals]
    return report.markdown(doc, summary, goals)
