"""Command line of the side-by-side benchmark (`python -m bench --help`)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import click

from cdpcore import format as fmt
from cdpcore.errors import CdpError

from . import peers
from .measure import CACHE_MODES
from .run import Settings, benchmark, brief, finish
from .workload import parse_size

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"
TOOLS = ("cdp", "restic", "borg")


def update_doc(doc_path: Path, table: str) -> None:
    """Replace the results block of BENCHMARKS.md (between the markers) with `table`."""
    text = doc_path.read_text() if doc_path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        raise CdpError(f"{doc_path} has no results block ({START} ... {END})")
    block = f"{START}\n{table}{END}"
    doc_path.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block,
                               text, flags=re.S))


@click.command()
@click.option("--size", default="2G", show_default=True,
              help="Workload image size (use e.g. 64M for a smoke run).")
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1),
              help="Runs per tool; figures are medians with min-max.")
@click.option("--series-size", default="256M", show_default=True,
              help="Image size of the 60-point series.")
@click.option("--series-points", default=60, show_default=True, type=click.IntRange(0),
              help="Points in the series (0: skip it).")
@click.option("--empty-size", default="1T", show_default=True,
              help="Sparse volume size for the empty-point cost (this project only).")
@click.option("--tools", default=",".join(TOOLS), show_default=True,
              help="Comma-separated subset of cdp,restic,borg (the limit always runs).")
@click.option("--work", default="/var/tmp/cdp-bench", show_default=True,
              type=click.Path(file_okay=False), help="Scratch and cache directory.")
@click.option("--cache", type=click.Choice(CACHE_MODES), default="drop", show_default=True,
              help="Before each measured step: drop the whole page cache, or evict only the "
              "image and repository files (programs stay cached).")
@click.option("--doc", default="BENCHMARKS.md", show_default=True,
              help="Markdown file whose results block is replaced; '' to leave it alone.")
@click.option("--json", "json_out", default="", help="Also write the JSON document here.")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False),
              help="Run nothing: render the table of a saved JSON document (and --doc).")
@click.option("--compression-level", type=int, default=fmt.ZSTD_LEVEL, show_default=True,
              help="zstd level of this project's agent (its `compression_level`; 0: none).")
@click.option("-v", "--verbose", is_flag=True, help="Log each step.")
def main(size: str, runs: int, series_size: str, series_points: int, empty_size: str,
         tools: str, work: str, cache: str, doc: str, json_out: str, from_json: str | None,
         compression_level: int, verbose: bool) -> None:
    """Benchmark this project side by side with restic and borg and the cat/dd limit:
    full and incremental backup time, peak memory, repository growth, restore time with
    a byte-for-byte check, a series of points, and the empty-point cost. Prints the
    Markdown table; results (JSON and Markdown) are kept under --work/results."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(message)s", stream=sys.stderr)
    if from_json:
        result = json.loads(Path(from_json).read_text())
        table = finish(result)
        if doc:
            update_doc(Path(doc), table)
        click.echo(table)
        return
    started = time.time()
    names = [t.strip() for t in tools.split(",") if t.strip()]
    unknown = set(names) - set(TOOLS)
    if unknown:
        raise click.BadParameter(f"unknown tools {sorted(unknown)}; choose from {TOOLS}",
                                 param_hint="--tools")
    settings = Settings(size=parse_size(size), runs=runs, series_size=parse_size(series_size),
                        series_points=series_points, empty_size=parse_size(empty_size),
                        work=Path(work), cache=cache)
    try:
        versions = peers.ensure_installed()
        chosen = make_tools(names, compression_level)
        result = benchmark(settings, chosen, extra={"versions": versions})
        if "cdp" in names:
            from .ours import empty_point

            try:
                result["empty_point"] = empty_point(settings.work / "scratch-empty",
                                                    settings.empty_size)
            except CdpError as exc:
                result["errors"].append(f"empty point: {brief(exc)}")
        result["duration_s"] = round(time.time() - started, 1)
    except CdpError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    table = finish(result)
    out_dir = Path(work) / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"bench-{stamp}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"bench-{stamp}.md").write_text(table)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=1))
    if doc:
        update_doc(Path(doc), table)
    click.echo(table)
    if result["errors"]:
        click.echo("errors:\n" + "\n".join(f"- {e}" for e in result["errors"]), err=True)
        sys.exit(1)


def make_tools(names: list[str], compression_level: int = fmt.ZSTD_LEVEL) -> list[peers.Tool]:
    chosen: list[peers.Tool] = []
    if "cdp" in names:
        from .ours import cdp_tools

        chosen += cdp_tools(compression_level)
    if "restic" in names:
        chosen.append(peers.Restic())
    if "borg" in names:
        chosen.append(peers.Borg())
    return chosen
