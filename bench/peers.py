"""The tools we compare against, driven as their users would: restic and borg with a local
repository (Debian's packages, installed by the benchmark when missing), and the physical
limit (`cat` and `dd` of the image)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cdpcore import runcmd
from cdpcore.errors import CdpError

from .measure import DirSize, Sample, dir_size, timed

PASSWORD = "bench-passphrase"  # a benchmark repository: nothing secret in it


class Tool(Protocol):
    """One side of the comparison. `setup` gives a fresh, empty repository under `work`;
    `backup` takes a point of `image`, told which byte ranges changed since the last one
    (a hint only tools with change tracking can use); `restore` writes the newest point
    to a file under `into` and returns its path."""

    name: str

    def setup(self, work: Path) -> None: ...

    def backup(self, image: Path, changed: list[tuple[int, int]] | None = None) -> Sample: ...

    def restore(self, into: Path) -> tuple[Sample, Path]: ...

    def repo(self) -> DirSize: ...

    def close(self) -> None: ...


class MissingTool(CdpError):
    """restic or borg is not installed and could not be installed."""


def ensure_installed() -> dict[str, str]:
    """Install restic and borg from Debian's packages if missing; returns their versions."""
    missing = [pkg for tool, pkg in (("restic", "restic"), ("borg", "borgbackup"))
               if shutil.which(tool) is None]
    if missing:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise MissingTool(f"{', '.join(missing)} missing and cannot be installed here "
                              "(needs root and apt-get)")
        try:
            runcmd.run(["apt-get", "install", "-y", "-q", *missing], timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except CdpError as exc:
            raise MissingTool(f"cannot install {', '.join(missing)}: {exc}") from None
    return {"restic": runcmd.run_text(["restic", "version"]).strip(),
            "borg": runcmd.run_text(["borg", "--version"]).strip()}


@dataclass
class Restic:
    """restic: local repository (format 2, zstd `auto`), its cache in the work directory."""

    name: str = "restic"
    repo_dir: Path = Path()
    env: dict[str, str] = field(default_factory=dict)
    image: Path = Path()

    def setup(self, work: Path) -> None:
        self.repo_dir = work / "restic-repo"
        self.env = {**os.environ, "RESTIC_PASSWORD": PASSWORD,
                    "RESTIC_REPOSITORY": str(self.repo_dir),
                    "RESTIC_CACHE_DIR": str(work / "restic-cache")}
        runcmd.run(["restic", "init", "-q"], env=self.env)

    def backup(self, image: Path, changed: list[tuple[int, int]] | None = None) -> Sample:
        self.image = image.resolve()
        return timed(["restic", "backup", "-q", "--host", "bench", str(self.image)],
                     env=self.env)

    def restore(self, into: Path) -> tuple[Sample, Path]:
        sample = timed(["restic", "restore", "latest", "--target", str(into)], env=self.env,
                       flushed=into)
        return sample, into / str(self.image).lstrip("/")

    def repo(self) -> DirSize:
        return dir_size(self.repo_dir)

    def close(self) -> None:
        return None


@dataclass
class Borg:
    """borg 1.2: local repository, `repokey` encryption, default lz4 compression; its
    cache and keys in the work directory."""

    name: str = "borg"
    repo_dir: Path = Path()
    env: dict[str, str] = field(default_factory=dict)
    image: Path = Path()
    archives: int = 0

    def setup(self, work: Path) -> None:
        self.repo_dir = work / "borg-repo"
        self.archives = 0
        self.env = {**os.environ, "BORG_PASSPHRASE": PASSWORD,
                    "BORG_BASE_DIR": str(work / "borg-home"),
                    "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
        runcmd.run(["borg", "init", "--encryption", "repokey", str(self.repo_dir)],
                   env=self.env)

    def backup(self, image: Path, changed: list[tuple[int, int]] | None = None) -> Sample:
        self.image = image.resolve()
        self.archives += 1
        return timed(["borg", "create", f"{self.repo_dir}::p{self.archives}",
                      str(self.image)], env=self.env)

    def restore(self, into: Path) -> tuple[Sample, Path]:
        into.mkdir(parents=True, exist_ok=True)
        rel = str(self.image).lstrip("/")
        sample = timed(["borg", "extract", f"{self.repo_dir}::p{self.archives}", rel],
                       env=self.env, cwd=into, flushed=into)
        return sample, into / rel

    def repo(self) -> DirSize:
        return dir_size(self.repo_dir)

    def close(self) -> None:
        return None


def read_limit(image: Path) -> Sample:
    """The fastest possible full backup: read the image once (`cat` to /dev/null)."""
    return timed(["cat", str(image)])


def copy_limit(image: Path, dest: Path) -> Sample:
    """The fastest possible restore: copy the image to a file (`dd`, then fsync)."""
    return timed(["dd", f"if={image}", f"of={dest}", "bs=4M", "status=none"], flushed=dest)


def write_floor(image: Path, dest: Path, block_size: int, cool: Callable[..., object]) -> float:
    """Seconds to write the image's non-zero blocks (of `block_size`) from memory to a new
    sparse file and fsync it: what any restore that skips zeros must at least spend on
    this disk. The blocks are read before the clock starts."""
    runs: list[tuple[int, bytes]] = []
    zero = bytes(block_size)
    with open(image, "rb") as f:
        offset = 0
        while block := f.read(block_size):
            if block != zero[:len(block)]:
                if runs and runs[-1][0] + len(runs[-1][1]) == offset and \
                        len(runs[-1][1]) < 4 << 20:
                    runs[-1] = (runs[-1][0], runs[-1][1] + block)
                else:
                    runs.append((offset, block))
            offset += len(block)
    dest.unlink(missing_ok=True)
    cool(image)
    start = time.perf_counter()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, offset)
        for at, data in runs:
            os.pwrite(fd, data, at)
        os.fsync(fd)
    finally:
        os.close(fd)
    took = time.perf_counter() - start
    dest.unlink()
    return took


def start_floor(cool: Callable[..., object]) -> float:
    """Seconds for a cold Python to start and import the agent's modules, nothing more:
    what every point taken by a fresh agent process pays before reading a block."""
    cool()
    start = time.perf_counter()
    runcmd.run([sys.executable, "-c", "import hotcopy.backup, cdpcore.client"])
    return time.perf_counter() - start
