"""Where the CPU of one incremental point goes, by process and by library: a resident
agent (as `cdp-agent run` takes its points) makes a full backup of the workload image,
the benchmark's change is applied, the page cache dropped, and the incremental (tracked
or scanned) is taken under `perf record`, one recorder on the server and one on the
agent (its sealing workers, forked for the point, inherit it). Native code is named by
its library (zstd, BLAKE3, OpenSSL, SQLite, libc, the kernel, the Python interpreter),
which py-spy (bench/profile.py) cannot show.

    python -m bench.cpusplit [--mode tracked|scan] [--size 2G] [--top 12]

Needs `perf` (Debian: linux-perf) and root (perf_event_paranoid).
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from . import workload
from .measure import cold
from .ours import CdpTool
from .run import fresh_work, prepare
from .workload import parse_size

#: Sampling rate: 1999 Hz (not a multiple of the kernel's timer) samples every ~0.5 ms.
RATE = 1999
_SAMPLE = re.compile(r"^\s*(\d+)\s+[0-9a-f]+\s+(.*)\s+\((.*)\)$")


@contextmanager
def recording(pid: int, out: Path) -> Iterator[None]:
    """`perf record` of process `pid` and the children it forks meanwhile."""
    proc = subprocess.Popen(["perf", "record", "-F", str(RATE), "-p", str(pid), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # perf attaches asynchronously
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # perf writes its file when interrupted
        proc.wait(timeout=120)


def samples(data: Path) -> Iterator[tuple[int, str, str]]:
    """(pid, symbol, library) of each sample in a perf.data file."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        match = _SAMPLE.match(line)
        if match:
            yield int(match[1]), match[2], match[3].rsplit("/", 1)[-1]


#: What the libraries that take the time are, for the printout.
LIBRARIES = {
    "backend_c.cpython-311-x86_64-linux-gnu.so": "zstd (python-zstandard)",
    "blake3.cpython-311-x86_64-linux-gnu.so": "BLAKE3 chunk IDs",
    "_rust.abi3.so": "AES-GCM (cryptography)",
    "libcrypto.so.3": "OpenSSL: TLS",
    "libz.so.1.2.13": "zlib: record CRC32",
    "libsqlite3.so.0.8.6": "SQLite: catalog",
    "libpython3.11.so.1.0": "Python interpreter",
    "libc.so.6": "libc: copies, malloc",
    "[kernel.kallsyms]": "kernel",
}


def split(data: Path, names: dict[int, str], other: str
          ) -> tuple[collections.Counter[str], collections.Counter[tuple[str, str]],
                     collections.Counter[tuple[str, str, str]]]:
    """CPU seconds per process role, per (role, library), per (role, library, symbol)."""
    roles: collections.Counter[str] = collections.Counter()
    libs: collections.Counter[tuple[str, str]] = collections.Counter()
    syms: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for pid, sym, lib in samples(data):
        role = names.get(pid, other)
        roles[role] += 1
        libs[role, lib] += 1
        syms[role, lib, sym] += 1
    return roles, libs, syms


@click.command()
@click.option("--mode", type=click.Choice(["tracked", "scan"]), default="tracked",
              show_default=True, help="The incremental's change detection.")
@click.option("--size", default="2G", show_default=True, help="Workload image size.")
@click.option("--work", default="/var/tmp/cdp-bench", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--top", default=12, show_default=True, help="Symbols to print.")
def main(mode: str, size: str, work: str, top: int) -> None:
    """CPU of one resident incremental point, by process and library (perf)."""
    if shutil.which("perf") is None:
        raise click.ClickException("perf is missing: apt-get install linux-perf")
    base = Path(work)
    prep = prepare(base, parse_size(size), 9)
    scratch, disk = fresh_work(base, "cpusplit", prep, disk_name="cpusplit/disk.img")
    tool = CdpTool("cdp-cpusplit", tracking=mode == "tracked")
    try:
        tool.setup(scratch / "tool")
        assert tool.server is not None and tool.server.proc is not None
        with tool.resident(disk) as agent:
            agent.backup()
            workload.apply_change(disk, prep.writes)
            cold("drop")(disk)
            with recording(tool.server.proc.pid, scratch / "server.perf"), \
                    recording(agent.proc.pid, scratch / "agent.perf"):
                point = agent.backup(changed=prep.ranges if tool.tracking else None)
            agent_pid = agent.proc.pid
    finally:
        tool.close()
    server = split(scratch / "server.perf", {}, "server")
    agent_side = split(scratch / "agent.perf", {agent_pid: "agent"}, "workers")
    roles = server[0] + agent_side[0]
    libs = server[1] + agent_side[1]
    syms = server[2] + agent_side[2]
    click.echo(f"{mode} point: {point.wall:.2f} s wall; CPU sampled at {RATE} Hz (seconds):")
    for role, n in roles.most_common():
        click.echo(f"  {role:8} {n / RATE:6.3f}")
    click.echo("by library:")
    for (role, lib), n in libs.most_common(top * 2):
        click.echo(f"  {role:8} {n / RATE:6.3f}  {LIBRARIES.get(lib, lib)}")
    click.echo("by symbol:")
    for (role, lib, sym), n in syms.most_common(top):
        click.echo(f"  {role:8} {n / RATE:6.3f}  {sym} ({lib})")
    click.echo(f"perf data: {scratch}/*.perf (perf report -i FILE)")


if __name__ == "__main__":
    main()
