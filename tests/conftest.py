"""Shared fixtures: `cdp_server`, a REAL CDP server process (python -m cdp_server serve)
over HTTPS on 127.0.0.1, with a fresh datastore per test and a self-signed certificate
made by the server's own `cert` subcommand."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from cdp_server.datastore import Datastore
from cdpcore.api import API_PREFIX, Role
from cdpcore.client import CdpClient
from tests import summaries
from tests.ctrlc import interruptible

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


#: The modules of the QEMU tests (mark vm), in the order they run. Under `make test`
#: (pytest-xdist, -n 2) they run one after another on one worker while the other runs
#: everything else: a QEMU boot leaves about a third of the two cores idle (vmstat over
#: two VM tests), which the host-side tests fill. Two VMs at once would only share the
#: same two cores. The tests that mostly boot come first, beside the host-side tests; the
#: agent's and the drill's, which keep both emulated CPUs busy, last: beside the host-side
#: tests the drill took 1702 s instead of 1058 s.
VM_MODULES = (
    "tests/image/test_boot.py",
    "tests/image/test_harness.py",
    "tests/image/test_auto.py",
    "tests/tui/test_vm_serial.py",
    "tests/drill/test_protected.py",
    "tests/rescue/test_vm_lvm.py",
    "tests/agent/test_vm_lvm.py",
    "tests/drill/test_drill.py",
)


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    stray = sorted({_module(item.nodeid) for item in items
                    if item.get_closest_marker("vm")} - set(VM_MODULES))
    if stray:
        raise pytest.UsageError("QEMU tests (mark vm) in modules missing from VM_MODULES in "
                                f"tests/conftest.py: {', '.join(stray)}")
    rank = {module: n for n, module in enumerate(VM_MODULES)}
    items.sort(key=lambda item: rank.get(_module(item.nodeid), -1))  # stable: the rest first


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    summaries.boot_times(terminalreporter)
    summaries.drill(terminalreporter)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's load distribution, but with the QEMU tests as one unit of work.
    (Its own `--dist loadgroup` cannot do this under pytest 9.2: pytest-xdist issue
    #1386.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class QemuBesideTheRest(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "vm" if _module(nodeid) in VM_MODULES else nodeid

    return QemuBesideTheRest(config, log)


@pytest.fixture(autouse=True)
def _priority_kept() -> Iterator[None]:
    """A point taken in the test process (the agent's CLI through CliRunner) lowers that
    process's own CPU and I/O priority, and every later test then ran at nice 10 and in
    the idle I/O class: slower, and failing the priority tests far away from the cause."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    yield
    assert os.getpriority(os.PRIO_PROCESS, 0) == before, (
        "this test lowered the test process's priority: run the agent in a subprocess")


def _cli(*args: str) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "cdp_server", *args, "--json"], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=60)
    doc: dict[str, str] = json.loads(out.stdout)
    return doc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerHandle:
    """A running cdp-server process and what a test needs to talk to it."""

    url: str
    ca_path: Path
    fingerprint: str
    admin_token: str
    data_dir: Path
    key_path: Path
    log_path: Path
    port: int
    grace: float = 86400.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process holds it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdp_server", "serve", "--data", str(self.data_dir),
             "--listen", f"127.0.0.1:{self.port}", "--cert", str(self.ca_path),
             "--key", str(self.key_path), "--grace", str(self.grace)],
            cwd=REPO, stdout=log, stderr=log, preexec_fn=interruptible)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cdp-server exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                if requests.get(f"{self.url}{API_PREFIX}/health", verify=str(self.ca_path),
                                timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("cdp-server did not answer /health in time:\n"
                           + self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, token: str, **kwargs: object) -> CdpClient:
        return CdpClient(self.url, token, ca_path=str(self.ca_path), **kwargs)  # type: ignore[arg-type]

    def admin(self) -> CdpClient:
        return self.client(self.admin_token)

    def add_host(self, name: str) -> dict[Role, str]:
        return dict(self.admin().create_host(name).tokens)

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture(scope="session")
def server_cert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _cli("cert", "--out", str(tmp_path_factory.mktemp("cert")))


@pytest.fixture
def make_cdp_server(tmp_path: Path, server_cert: dict[str, str],
                    ) -> Iterator[Callable[..., ServerHandle]]:
    """Factory of server processes: `make_cdp_server(data_dir=None, grace=86400)` inits a
    datastore in `data_dir` (default: a fresh one under tmp_path) and starts a server on
    it. Every server it started is killed after the test."""
    started: list[ServerHandle] = []

    def make(data_dir: Path | None = None, grace: float = 86400.0) -> ServerHandle:
        n = len(started)
        data = data_dir or tmp_path / f"datastore{n or ''}"
        # In this process, as `cdp-server init` does it (tested on its own in test_ops):
        # one Python start less per server (about 0.6 s, 300 servers in the suite).
        admin_token = Datastore.init(data)[1]
        port = _free_port()
        handle = ServerHandle(url=f"https://127.0.0.1:{port}",
                              ca_path=Path(server_cert["cert"]),
                              fingerprint=server_cert["fingerprint"],
                              admin_token=admin_token, data_dir=data,
                              key_path=Path(server_cert["key"]),
                              log_path=tmp_path / f"server{n or ''}.log", port=port,
                              grace=grace)
        started.append(handle)
        handle.start()
        return handle

    try:
        yield make
    finally:
        for handle in started:
            # SIGKILL: the datastore is thrown away, and a graceful stop waits up to 3 s
            # for idle keep-alive TLS connections that test clients leave open.
            handle.kill()
            if os.environ.get("CDP_SHOW_SERVER_LOG"):
                print(handle.log())


@pytest.fixture
def cdp_server(make_cdp_server: Callable[..., ServerHandle]) -> ServerHandle:
    """A fresh datastore and a real server process serving it; killed after the test."""
    return make_cdp_server()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of the given MiB under the test's directory (for full-disk tests),
    each unmounted when the test ends."""
    mounts: list[Path] = []

    def mount(mib: int) -> Path:
        path = tmp_path / f"small{len(mounts)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
                       check=True)
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on 127.0.0.1 serving a fresh directory, as a site serves answers
    files to rescue systems: yields its base URL and the directory."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass  # requests are not test output

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
