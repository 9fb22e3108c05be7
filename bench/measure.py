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
from collections.abc import Callable, Mapping, Sequence
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
    """Write back dirty pages and drop the whole page cache (programs and libraries too).
    Returns False (and logs why) where the kernel does not allow it."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        log.warning("cannot drop page caches (%s): falling back to evicting files", exc)
        return False
    return True


def evict(*paths: str | Path) -> int:
    """Write back and drop from the page cache every file under `paths` (the image and the
    repository), so the next read of them comes from the disk, while programs and
    libraries stay cached. Returns the number of files evicted."""
    count = 0
    for path in _files(paths):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # a socket, a vanished temporary file: nothing to drop
        try:
            os.fdatasync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            count += 1
        finally:
            os.close(fd)
    return count


def flush(*paths: str | Path) -> None:
    """fsync every file under `paths`: a restore is done when its bytes are on disk. Only
    these files, not a global sync that would also wait for other processes' writes."""
    for path in _files(paths):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _files(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for top in map(Path, paths):
        if top.is_file():
            files.append(top)
        elif top.is_dir():
            files += [Path(d) / n for d, _, names in os.walk(top) for n in names]
    return files


CACHE_MODES = ("drop", "evict")


def cold(mode: str) -> Callable[..., object]:
    """The step run before each measured read: `drop` empties the whole page cache (so
    Python tools also import themselves from disk), `evict` drops only the files named
    (image and repository). `drop` falls back to `evict` where it is not allowed."""
    if mode not in CACHE_MODES:
        raise ValueError(f"cache mode {mode!r}: choose from {CACHE_MODES}")

    def run(*paths: str | Path) -> object:
        return (mode == "drop" and drop_caches()) or evict(*paths)
    return run


def cached_bytes(path: str | Path) -> int:
    """Bytes of a file resident in the page cache (util-linux fincore)."""
    out = runcmd.run_text(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)])
    return int(out.split()[0])


def timed(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
          cwd: str | Path | None = None, stdout: str | Path | None = None,
          flushed: str | Path | None = None) -> Sample:
    """Run `argv` under GNU time. `stdout`: file to send its output to (else discarded).
    `flushed`: a file or directory the step writes, fsynced inside the wall time so page
    cache write-back is not left out of it."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-") as report, \
            contextlib.ExitStack() as stack:
        cmd = [GNU_TIME, "-f", "%e %U %S %M", "-o", report.name, *[str(a) for a in argv]]
        out = stack.enter_context(open(stdout, "wb")) if stdout else subprocess.DEVNULL
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.PIPE,
                              check=False)
        if flushed is not None and proc.returncode == 0:
            flush(flushed)
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
            "os": _os_name(), "work_fs": root}


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()
