"""Where this project's time goes: one full backup, one incremental and one restore of
the benchmark workload, with py-spy sampling the agent (or restore) process and the
server at the same time. Prints, per step and process, the functions where samples
landed (self time, all threads) and keeps the collapsed stacks for flame graphs.

    .venv/bin/python -m bench.profile [--size 512M] [--work /var/tmp/cdp-bench]
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from pathlib import Path

import click

from . import workload
from .ours import CdpTool, repo_root
from .run import fresh_work, prepare
from .workload import parse_size

PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def top_frames(collapsed: Path, limit: int) -> list[tuple[str, float]]:
    """Share of samples per innermost frame (function and file, line numbers merged)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        func, _, where = stack.rsplit(";", 1)[-1].partition(" (")
        counts[f"{func} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})"] += int(n)
        total += int(n)
    return [(name, n / total) for name, n in counts.most_common(limit)] if total else []


def profiled(tool: CdpTool, out: Path, *args: str) -> None:
    """Run one bench.agent_run step under py-spy (its worker processes included) while a
    second py-spy samples the server."""
    assert tool.server is not None and tool.server.proc is not None
    server = subprocess.Popen([PY_SPY, "record", "--pid", str(tool.server.proc.pid),
                               "--format", "raw", "--rate", "50", "-o", str(out) + ".server.txt"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        subprocess.run([PY_SPY, "record", "--format", "raw", "--rate", "50", "--subprocesses",
                        "-o", str(out) + ".agent.txt", "--", sys.executable, "-m",
                        "bench.agent_run", *args], cwd=repo_root(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        server.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
        server.wait(timeout=60)


@click.command()
@click.option("--size", default="512M", show_default=True, help="Workload image size.")
@click.option("--work", default="/var/tmp/cdp-bench", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--top", default=12, show_default=True, help="Frames to print per profile.")
def main(size: str, work: str, top: int) -> None:
    """Profile this project's full backup, incremental backup and restore."""
    if not Path(PY_SPY).exists():
        raise click.ClickException(f"{PY_SPY} missing: pip install py-spy (dev extra)")
    base = Path(work)
    prep = prepare(base, parse_size(size), 9)
    scratch, disk = fresh_work(base, "profile", prep, disk_name="profile/disk.img")
    tool = CdpTool("cdp-profile", tracking=False)
    try:
        tool.setup(scratch / "tool")
        settings = str(tool.settings)
        profiled(tool, scratch / "full", "backup", settings, str(disk))
        workload.apply_change(disk, prep.writes)
        profiled(tool, scratch / "incremental", "backup", settings, str(disk))
        profiled(tool, scratch / "restore", "restore", settings, str(scratch / "restored.img"))
    finally:
        tool.close()
    for step in ("full", "incremental", "restore"):
        for proc in ("agent", "server"):
            click.echo(f"\n{step} backup, {proc}:" if step != "restore" else f"\n{step}, {proc}:")
            for name, share in top_frames(scratch / f"{step}.{proc}.txt", top):
                click.echo(f"  {share:6.1%}  {name}")
    click.echo(f"\ncollapsed stacks (for flamegraph.pl or speedscope): {scratch}/*.txt")


if __name__ == "__main__":
    main()
