"""This project's side of the benchmark: a real CDP server process (the `cdp-server` CLI,
HTTPS on 127.0.0.1), the agent and the restore stream each run as a measured process
(bench.agent_run). Two tools: `cdp-scan` (the agent reads and hashes every block) and
`cdp-tracking` (the agent is handed the exact changed ranges), the latter only when the
agent's backup() accepts such a list."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdpcore import format as fmt
from cdpcore import runcmd
from cdpcore.api import Role
from cdpcore.client import CdpClient
from cdpcore.errors import CdpError
from cdpcore.keys import new_master_key

from .measure import DirSize, Sample, dir_size, process_cpu, process_peak_rss_kib, timed

HOST = "benchhost"
#: Largest sparse volume the empty-point step scans when the agent takes no change list.
SCAN_CAP = 4 << 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_cmd() -> list[str]:
    return [sys.executable, "-m", "cdp_server"]


@dataclass
class Server:
    """A `cdp-server` process with a fresh data directory and a self-signed certificate."""

    root: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    ca: str = ""
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def start(self, certs: Path) -> None:
        """Start on a free port; `certs` holds cert.pem and key.pem (made there by
        `cdp-server cert` if missing, once for all servers of a benchmark)."""
        if not (certs / "cert.pem").exists():
            runcmd.run([*_server_cmd(), "cert", "--out", str(certs), "--name", "127.0.0.1"])
        admin = json.loads(runcmd.run_text([*_server_cmd(), "init", "--data", str(self.data),
                                            "--json"]))["admin_token"]
        port = _free_port()
        self.url = f"https://127.0.0.1:{port}"
        self.ca = str(certs / "cert.pem")
        log = open(self.root / "server.log", "wb")  # noqa: SIM115 (the server holds it)
        self.proc = subprocess.Popen(
            [*_server_cmd(), "serve", "--data", str(self.data), "--listen", f"127.0.0.1:{port}",
             "--cert", self.ca, "--key", str(certs / "key.pem"), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait(admin)
        self.tokens = {str(role): token for role, token in
                       self._client(admin).create_host(HOST).tokens.items()}

    def _client(self, token: str) -> CdpClient:
        return CdpClient(self.url, token, ca_path=self.ca, retries=0)

    def _wait(self, token: str) -> None:
        client = self._client(token)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise CdpError(f"cdp-server exited with {self.proc.returncode}; see "
                               f"{self.root / 'server.log'}")
            try:
                client.health()
                return
            except CdpError:
                if time.monotonic() > deadline:
                    raise CdpError("cdp-server did not answer within 30 s") from None
                time.sleep(0.1)

    def cpu(self) -> float:
        assert self.proc is not None
        return process_cpu(self.proc.pid)

    def peak_rss_kib(self) -> int:
        assert self.proc is not None
        return process_peak_rss_kib(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class CdpTool:
    """This project as one side of the comparison (see bench.peers.Tool)."""

    name: str
    tracking: bool
    compression_level: int = fmt.ZSTD_LEVEL
    server: Server | None = None
    settings: Path = Path()
    server_rss_kib: int = 0

    def setup(self, work: Path) -> None:
        self.close()
        self.server_rss_kib = 0
        self.server = Server(work / "server")
        self.server.root.mkdir(parents=True)
        self.server.start(work.parent / "certs")
        self.settings = work / "agent.json"
        self.settings.write_text(json.dumps({
            "url": self.server.url, "token": self.server.tokens[Role.agent],
            "ca": self.server.ca, "host": HOST, "master_hex": new_master_key().hex(),
            "state_dir": str(work / "agent-state"),
            "compression_level": self.compression_level}))
        os.chmod(self.settings, 0o600)

    def _step(self, *args: str, flushed: Path | None = None) -> Sample:
        assert self.server is not None
        before = self.server.cpu()
        sample = timed([sys.executable, "-m", "bench.agent_run", *args], cwd=repo_root(),
                       flushed=flushed)
        sample.extra_cpu = self.server.cpu() - before
        return sample

    def backup(self, image: Path, changed: list[tuple[int, int]] | None = None) -> Sample:
        if self.tracking and changed is not None:
            ranges = self.settings.with_name("changed.json")
            ranges.write_text(json.dumps(changed))
            return self._step("backup", str(self.settings), str(image), "--changed",
                              str(ranges))
        return self._step("backup", str(self.settings), str(image))

    @contextlib.contextmanager
    def resident(self, image: Path) -> Iterator[ResidentAgent]:
        """One long-lived agent process taking points of `image` on request."""
        proc = subprocess.Popen([sys.executable, "-m", "bench.agent_run", "resident",
                                 str(self.settings), str(image)], cwd=repo_root(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert self.server is not None
            yield ResidentAgent(proc, self.server, self.settings.with_name("changed.json"))
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            if proc.wait(timeout=60) != 0:
                raise CdpError(f"the resident agent exited with status {proc.returncode}")

    def restore(self, into: Path) -> tuple[Sample, Path]:
        into.mkdir(parents=True, exist_ok=True)
        dest = into / "restored.img"
        return self._step("restore", str(self.settings), str(dest), flushed=dest), dest

    def repo(self) -> DirSize:
        assert self.server is not None
        return dir_size(self.server.data)

    def close(self) -> None:
        if self.server is not None:
            self.server_rss_kib = max(self.server_rss_kib, self.server.peak_rss_kib()
                                      if self.server.proc else 0)
            self.server.stop()
            self.server = None


@dataclass
class ResidentAgent:
    proc: subprocess.Popen[str]
    server: Server
    ranges: Path

    def backup(self, changed: list[tuple[int, int]] | None = None) -> Sample:
        """A point, timed inside the agent process (no Python start, no imports)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if changed is not None:
            self.ranges.write_text(json.dumps(changed))
        before = self.server.cpu()
        self.proc.stdin.write(f"{self.ranges if changed is not None else ''}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise CdpError(f"the resident agent stopped (status {self.proc.wait()})")
        answer = json.loads(line)
        return Sample(wall=answer["wall"], user=answer["cpu"], sys=0.0, rss_kib=0,
                      extra_cpu=self.server.cpu() - before)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def cdp_tools(compression_level: int = fmt.ZSTD_LEVEL) -> list[CdpTool]:
    from .agent_run import tracking_parameter

    tools = [CdpTool("cdp-scan", tracking=False, compression_level=compression_level)]
    if tracking_parameter() is not None:
        tools.append(CdpTool("cdp-tracking", tracking=True,
                             compression_level=compression_level))
    return tools


def empty_point(work: Path, size: int) -> dict[str, Any]:
    """Repository growth of a point with nothing changed on a `size`-byte sparse volume
    holding a little data. Uses change tracking with an empty change list when the agent
    has it; otherwise the agent must read the whole volume (about 0.45 GB/s for holes on
    this machine), so the size is capped at SCAN_CAP and the note says so."""
    from .agent_run import tracking_parameter

    tracking = tracking_parameter() is not None
    note = "agent given an empty change list" if tracking else "scan mode"
    if not tracking and size > SCAN_CAP:
        note = (f"scan mode on {SCAN_CAP >> 30} GiB instead of {size / 2**40:.3g} TiB: without "
                "a change list the agent reads every hole, which would take about 40 min per "
                "TiB here; an unchanged point adds only its manifest and catalog row, whatever "
                "the size")
        size = SCAN_CAP
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    volume = work / "sparse.img"
    with open(volume, "wb") as f:
        f.truncate(size)
        for i in range(16):  # a little data spread over the volume
            f.seek(size // 16 * i)
            f.write(os.urandom(1 << 20))
    tool = CdpTool("cdp-empty", tracking=tracking)
    try:
        tool.setup(work)
        tool.backup(volume)
        before = tool.repo()
        sample = tool.backup(volume, changed=[] if tracking else None)
        after = tool.repo()
    finally:
        tool.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"volume_size": size, "bytes": after.apparent - before.apparent,
            "allocated_bytes": after.allocated - before.allocated, "wall_s": sample.wall,
            "note": note}
