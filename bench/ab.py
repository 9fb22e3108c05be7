"""This checkout against another one, alternating on the same machine: this project's full
backup, incremental and restore (bench.run.run_tool), each checkout's own agent and
server, run after run. On a machine whose speed drifts (a shared VM), the side-by-side
benchmark's ratios to restic move with the machine; alternating two versions of the code
tells what the code changed.

    git worktree add /tmp/old <commit>
    .venv/bin/python -m bench.ab /tmp/old [--rounds 3] [--size 2G] [--tools cdp-scan,cdp-tracking]

Prints one line per step (JSON: the raw figures of bench.run, plus the agent's CPU
without the server's) and the medians of both checkouts at the end.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from .ours import repo_root

#: Run inside the checkout measured, so that its own bench, agent and server are used.
_STEP = """
import json, sys
from pathlib import Path
from bench.measure import cold
from bench.ours import CdpTool
from bench.run import Collector, prepare, run_tool
from bench.workload import parse_size
work, size, tool = Path(sys.argv[1]), parse_size(sys.argv[2]), sys.argv[3]
prep = prepare(work, size, 9)
(work / "ab").mkdir(exist_ok=True)
out = Collector()
run_tool(CdpTool(tool, tracking=tool == "cdp-tracking"), prep, work / "ab", out, cold("drop"))
print(json.dumps({key: values[0] for key, values in out.raw[tool].items()}))
"""
FIGURES = ("full_s", "full_cpu_s", "full_server_cpu_s", "incr_s", "incr_cpu_s", "restore_s")


def step(checkout: Path, work: Path, size: str, tool: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _STEP, str(work), size, tool], cwd=checkout,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise click.ClickException(f"{tool} in {checkout} failed:\n{proc.stderr[-2000:]}")
    raw: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    row = {key: round(raw[key], 2) for key in FIGURES if key in raw}
    row["full_agent_cpu_s"] = round(raw["full_cpu_s"] - raw["full_server_cpu_s"], 2)
    return row


@click.command()
@click.argument("other", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--size", default="2G", show_default=True, help="Workload image size.")
@click.option("--tools", default="cdp-scan,cdp-tracking", show_default=True)
@click.option("--work", default="/var/tmp/cdp-bench", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
def main(other: Path, rounds: int, size: str, tools: str, work: Path) -> None:
    """Alternate this checkout and OTHER (another checkout, e.g. a git worktree)."""
    checkouts = {"this": repo_root(), "other": other.resolve()}
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for n in range(rounds):
        for tool in tools.split(","):
            for name, path in checkouts.items():
                row = step(path, work, size, tool)
                rows.setdefault((tool, name), []).append(row)
                click.echo(f"round {n + 1} {tool} {name}: {json.dumps(row)}")
    click.echo("medians:")
    for (tool, name), samples in rows.items():
        medians = {k: round(statistics.median(r[k] for r in samples), 2) for k in samples[0]}
        click.echo(f"  {tool} {name}: {json.dumps(medians)}")


if __name__ == "__main__":
    main()
