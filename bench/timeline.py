"""How busy the machine is during a point, over time: a full backup of the workload image
and the benchmark's incremental (tracked, or scan with `--mode scan`), each taken as the
side-by-side benchmark takes it (a fresh agent process, a real server, the page cache
dropped first), while the whole machine's CPU (/proc/stat) and the work directory's
disk (/proc/diskstats) are sampled. Prints, per interval: cores busy, cores waiting for
I/O, and the disk's read and write rates. It tells a point that waits (idle cores) from
one that is CPU-bound (all cores busy), which per-process profiles (bench.profile,
bench.cpusplit) do not.

    python -m bench.timeline [--size 2G] [--interval 0.25] [--mode tracked|scan]
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click

from . import workload
from .measure import cold
from .ours import CdpTool
from .run import fresh_work, prepare
from .workload import parse_size

#: How often the counters are read.
PERIOD = 0.05
_SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's


@dataclass(frozen=True)
class Counters:
    at: float  # time.monotonic()
    total: int  # jiffies of all CPUs, all states
    idle: int  # idle and iowait jiffies
    iowait: int
    read: int  # bytes read from the disk
    written: int


def disk_name(path: Path) -> str:
    """The /proc/diskstats name of the block device holding `path`."""
    dev = os.stat(path).st_dev
    for line in Path("/proc/diskstats").read_text().splitlines():
        major, minor, name = line.split()[:3]
        if (int(major), int(minor)) == (os.major(dev), os.minor(dev)):
            return name
    raise click.ClickException(f"{path}: its device {os.major(dev)}:{os.minor(dev)} is not "
                               "in /proc/diskstats")


def read_counters(disk: str) -> Counters:
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if fields[2] == disk:
            return Counters(time.monotonic(), sum(cpu), cpu[3] + cpu[4], cpu[4],
                            int(fields[5]) * _SECTOR, int(fields[9]) * _SECTOR)
    raise click.ClickException(f"disk {disk} vanished from /proc/diskstats")


class Sampler:
    """Reads the counters every PERIOD seconds on a thread while in its `with` block."""

    def __init__(self, disk: str) -> None:
        self.disk = disk
        self.samples: list[Counters] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(read_counters(self.disk))
            self._stop.wait(PERIOD)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(read_counters(self.disk))


def rows(samples: list[Counters], interval: float, cpus: int,
         ) -> list[tuple[float, float, float, float, float]]:
    """(start, cores busy, cores in iowait, MB/s read, MB/s written) per `interval` from
    the first sample. Pure."""
    out = []
    first, edge = samples[0], samples[0].at + interval
    prev = first
    for now in samples[1:]:
        if now.at >= edge or now is samples[-1]:
            jiffies, secs = max(now.total - prev.total, 1), max(now.at - prev.at, 1e-9)
            out.append((prev.at - first.at,
                        cpus * (jiffies - (now.idle - prev.idle)) / jiffies,
                        cpus * (now.iowait - prev.iowait) / jiffies,
                        (now.read - prev.read) / secs / 1e6,
                        (now.written - prev.written) / secs / 1e6))
            prev, edge = now, now.at + interval
    return out


@click.command()
@click.option("--size", default="2G", show_default=True, help="Workload image size.")
@click.option("--work", default="/var/tmp/cdp-bench", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--interval", default=0.25, show_default=True,
              type=click.FloatRange(min=PERIOD), help="Seconds per printed row.")
@click.option("--mode", type=click.Choice(["tracked", "scan"]), default="tracked",
              show_default=True, help="The incremental's change detection.")
def main(size: str, work: str, interval: float, mode: str) -> None:
    """CPU and disk over time during a full backup and an incremental."""
    base = Path(work)
    prep = prepare(base, parse_size(size), 9)
    scratch, disk = fresh_work(base, "timeline", prep, disk_name="timeline/disk.img")
    device, cpus = disk_name(scratch), os.cpu_count() or 1
    drop = cold("drop")
    tool = CdpTool("cdp-timeline", tracking=mode == "tracked")
    try:
        tool.setup(scratch / "tool")
        for step in ("full backup", f"{mode} incremental"):
            if step != "full backup":
                workload.apply_change(disk, prep.writes)
            drop(disk, scratch)
            with Sampler(device) as sampler:
                sample = tool.backup(disk, prep.ranges if step != "full backup" else None)
            click.echo(f"{step}: {sample.wall:.2f} s wall, CPU {sample.user + sample.sys:.2f} s "
                       f"agent and {sample.extra_cpu:.2f} s server ({cpus} CPUs; disk {device})")
            click.echo("    time  busy  iowait   read MB/s  write MB/s")
            for start, busy, iowait, read, written in rows(sampler.samples, interval, cpus):
                click.echo(f"  {start:6.2f}  {busy:4.2f}  {iowait:6.2f}  {read:10.0f}  "
                           f"{written:10.0f}")
    finally:
        tool.close()


if __name__ == "__main__":
    main()
