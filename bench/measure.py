"""Measuring one step of a benchmark: wall time, CPU and peak memory of a command (GNU
time), cold page caches, repository sizes, and a description of the machine."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cdpcore import runcmd
from cdpcore.errors import CommandFailed

log = logging.getLogger("cdp.bench")
GNU_TIME = "/usr/bin/time"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """One measured command. `rss_kib`: peak resident memory of its largest process;
    `extra_cpu`: CPU seconds spent for it by a helper process (our server)."""

    wall: float
    user: float
    sys: float
    rss_kib: int
    extra_cpu: float = 0.0

    @property
    def cpu(self) -> float:
        return self.user + self.sys + self.extra_cpu


def drop_caches() -> bool:
    """Write back dirty pages and drop the page cache, so the next read comes from the
    disk. Returns False (and logs why) where the kernel does not allow it."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        log.warning("cannot drop page caches (%s): reads may come from memory", exc)
        return False
    return True


def timed(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
          cwd: str | Path | None = None, stdout: str | Path | None = None,
          sync: bool = False) -> Sample:
    """Run `argv` under GNU time. `stdout`: file to send its output to (else discarded).
    `sync`: include a final sync in the wall time, for steps that write files, so page
    cache write-back is not left out of their time."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-") as report, \
            contextlib.ExitStack() as stack:
        cmd = [GNU_TIME, "-f", "%e %U %S %M", "-o", report.name, *[str(a) for a in argv]]
        out = stack.enter_context(open(stdout, "wb")) if stdout else subprocess.DEVNULL
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.PIPE,
                              check=False)
        if sync:
            os.sync()
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise CommandFailed(cmd[5:], proc.returncode, proc.stderr.decode(errors="replace"))
        fields = report.read().split()[-4:]
    _, user, system, rss = fields
    return Sample(wall=wall, user=float(user), sys=float(system), rss_kib=int(rss))


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def process_peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class DirSize:
    apparent: int  # sum of file sizes
    allocated: int  # disk blocks in use (what small files really cost)
    files: int


def dir_size(path: str | Path) -> DirSize:
    apparent = allocated = files = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return DirSize(apparent, allocated, files)


def same_bytes(a: str | Path, b: str | Path) -> bool:
    """Byte-for-byte comparison (cmp), the check behind every restore figure."""
    return subprocess.run(["cmp", "-s", str(a), str(b)], check=False).returncode == 0


def machine() -> dict[str, object]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    root = runcmd.run_text(["findmnt", "-no", "SOURCE,FSTYPE", "-T", "/var/tmp"]).strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "os": _os_name(), "work_fs": root, "drop_caches": drop_caches()}


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()
