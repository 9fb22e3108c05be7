"""A stop while a request waits for a server that accepted the connection and then says
nothing: `cdp-agent run` (SIGTERM, systemd's stop, after the configured `stop_grace`) and a
Ctrl-C (SIGINT, at once) end within seconds, whether the request is the agent's own or a sealing worker's upload, commit
nothing and leave no snapshot behind. The client's own tries (5 of up to 120 s each)
used to run their course first: up to 10 minutes after the stop, past the unit's
TimeoutStopSec, with the point's snapshots held. The one-shot `cdp-agent backup` takes
SIGTERM as `run` does (exit 14 when the point is abandoned, 0 when it commits); it used to
die of it at once."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cdpcore.errors import StopRequested
from hotcopy.state import StateDir
from tests.ctrlc import interruptible, signal_state

from .conftest import Agent, wait_for_point

#: How long after the stop the agent may take to exit (it used to take up to 10 minutes).
BOUND = 15.0
#: The `stop_grace` configured: how long a request may still take after SIGTERM.
GRACE = 3


class _FallsSilent:
    """A TCP relay on 127.0.0.1 in front of the real server (TLS passes through it
    untouched). Once one connection has carried more than `after` bytes from the agent
    (0: at once; 1 MiB: a worker's upload of chunks), it relays nothing more on any
    connection and accepts new ones without a word: the server took the connection and
    never answers. Nothing is closed until the test ends."""

    def __init__(self, target_port: int, after: int) -> None:
        self.target_port, self.after = target_port, after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.silent = threading.Event()
        if after == 0:
            self.silent.set()
        self.accepted = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            self._held.append(conn)
            self.accepted += 1
            if self.silent.is_set():
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._held.append(upstream)
            threading.Thread(target=self._relay, args=(conn, upstream, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(upstream, conn, False),
                             daemon=True).start()

    def _relay(self, src: socket.socket, dst: socket.socket, from_agent: bool) -> None:
        carried = 0
        while not self.silent.is_set():
            if not select.select([src], [], [], 0.1)[0]:
                continue
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            carried += len(data)
            if self.silent.is_set() or (from_agent and carried > self.after):
                self.silent.set()
                return  # these bytes, and all after them, never arrive
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for sock in self._held:
            sock.close()


@pytest.fixture
def silent_after(request: pytest.FixtureRequest, cdp_server) -> Iterator[_FallsSilent]:  # type: ignore[no-untyped-def]
    relay = _FallsSilent(cdp_server.port, request.param)
    try:
        yield relay
    finally:
        relay.close()


def _configure(agent: Agent, cdp_server, tmp_path: Path, relay: _FallsSilent  # type: ignore[no-untyped-def]
               ) -> tuple[Path, Path]:
    """The agent set up against the real server, then pointed at the relay; one sealing
    worker, and a 24 MiB image of random data (every 8 MiB a worker's upload)."""
    image = tmp_path / "images" / "disk.img"
    image.parent.mkdir()
    image.write_bytes(os.urandom(24 * 1024 * 1024))
    config = tmp_path / "agent.toml"
    init = subprocess.run(
        [sys.executable, "-m", "hotcopy", "init", "--server", cdp_server.url, "--token",
         agent.token, "--host", agent.host, "--passphrase", "s3cret", "--ca",
         str(cdp_server.ca_path), "--source", str(image), "--state-dir", str(agent.state_dir)],
        env={**os.environ, "CDP_AGENT_CONFIG": str(config)}, capture_output=True, text=True,
        timeout=120, check=False)
    assert init.returncode == 0, init.stderr
    text = config.read_text().replace(cdp_server.url, f"https://127.0.0.1:{relay.port}")
    config.write_text(text.replace("workers = 0", "workers = 1")
                      .replace("stop_grace = 60", f"stop_grace = {GRACE}"))
    assert "workers = 1" in config.read_text()
    assert f"stop_grace = {GRACE}" in config.read_text()
    return config, image


def _agent_process(config: Path, command: str, *args: str) -> subprocess.Popen[str]:
    """`cdp-agent COMMAND ARGS...` of `config`, with Ctrl-C at its default."""
    return subprocess.Popen([sys.executable, "-m", "hotcopy", command, *args],
                            env={**os.environ, "CDP_AGENT_CONFIG": str(config)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)


def _stopped(proc: subprocess.Popen[str], stop: signal.Signals, wait_for: Callable[[], None]
             ) -> tuple[float, str, str]:
    """Once `wait_for()` returns, and a second more, `stop` sent to the agent alone (as
    `kill PID`, or systemctl stop, does): the seconds it took to exit then, its stdout and
    its stderr. Fails if it still runs BOUND seconds after the stop."""
    try:
        wait_for()
        time.sleep(1.0)  # the request waits for its answer
        assert proc.poll() is None, proc.communicate()[1]
        stopped = time.monotonic()
        proc.send_signal(stop)
        try:
            proc.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            state = signal_state(proc.pid)
            proc.kill()  # its workers die with it (PR_SET_PDEATHSIG)
            raise AssertionError(
                f"the agent still ran {BOUND:.0f} s after {stop.name}:\n{state}\n"
                f"{proc.communicate()[1][-3000:]}") from None
        took = time.monotonic() - stopped
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"{stop.name}: the agent exited {took:.2f} s after the stop")
    return took, out, err


def _stuck(proc: subprocess.Popen[str], relay: _FallsSilent) -> Callable[[], None]:
    """Waits until the agent reached the server through `relay` and it fell silent."""
    def wait() -> None:
        deadline = time.monotonic() + 120
        while not (relay.silent.is_set() and relay.accepted):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the agent never reached the server"
            time.sleep(0.05)
    return wait


@pytest.mark.parametrize("silent_after", [0, 1024 * 1024], ids=["agent", "worker"],
                         indirect=True)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_ends_a_request_the_server_never_answers(  # type: ignore[no-untyped-def]
        agent: Agent, cdp_server, tmp_path: Path, silent_after: _FallsSilent,
        stop: signal.Signals) -> None:
    config, image = _configure(agent, cdp_server, tmp_path, silent_after)
    proc = _agent_process(config, "run")
    took, _, err = _stopped(proc, stop, _stuck(proc, silent_after))
    assert proc.returncode == (0 if stop == signal.SIGTERM else 130), err[-3000:]
    if stop == signal.SIGTERM:
        # given up because of the stop, not reported as a failing server, once the request
        # had its grace (a server finishing the point would have been waited for)
        assert "abandoned" in err and "point failed" not in err, err[-3000:]
        assert took >= GRACE
    assert agent.remote.points(agent.host) == []  # nothing committed
    assert os.listdir(image.parent) == ["disk.img"]  # no snapshot left behind


@pytest.mark.parametrize("silent_after", [0, 1024 * 1024], ids=["agent", "worker"],
                         indirect=True)
def test_sigterm_abandons_a_backup_the_server_never_answers(  # type: ignore[no-untyped-def]
        agent: Agent, cdp_server, tmp_path: Path, silent_after: _FallsSilent) -> None:
    """The one-shot `cdp-agent backup` (a oneshot unit, `timeout`, a script's `kill`) gets
    the same SIGTERM as `run`: the request has its grace, then the point is abandoned with
    exit 14. It used to die of the signal at once, its snapshots left for the next run."""
    config, image = _configure(agent, cdp_server, tmp_path, silent_after)
    proc = _agent_process(config, "backup")
    took, out, err = _stopped(proc, signal.SIGTERM, _stuck(proc, silent_after))
    assert proc.returncode == StopRequested.exit_code, err[-3000:]
    assert "point abandoned" in err and "stopping" in err, err[-3000:]
    assert out == ""  # no point reported
    assert GRACE <= took < GRACE + 6  # the request had its grace, and no more
    assert agent.remote.points(agent.host) == []  # nothing committed
    assert os.listdir(image.parent) == ["disk.img"]  # no snapshot left behind
    # no point recorded in the local state, and no half-written file of it
    assert StateDir(agent.state_dir, agent.host).load().point_id is None
    assert not list(agent.state_dir.rglob("*.tmp")), list(agent.state_dir.rglob("*"))


@pytest.mark.parametrize("silent_after", [1 << 62], ids=["never"], indirect=True)
def test_sigterm_lets_a_backup_the_server_answers_commit(  # type: ignore[no-untyped-def]
        agent: Agent, cdp_server, tmp_path: Path, silent_after: _FallsSilent) -> None:
    """A SIGTERM while the server answers lets `cdp-agent backup` finish and commit its
    point (exit 0), no longer held back by the bandwidth cap: 24 MiB at 64 KiB/s would
    take over 6 minutes."""
    config, image = _configure(agent, cdp_server, tmp_path, silent_after)
    proc = _agent_process(config, "backup", "--json", "--bandwidth", str(64 * 1024))
    lock = agent.state_dir / agent.host / "lock"
    _, out, err = _stopped(proc, signal.SIGTERM, lambda: wait_for_point(lock, proc))
    assert proc.returncode == 0, err[-3000:]
    assert [p.point_id for p in agent.remote.points(agent.host)] == \
        [json.loads(out)["point_id"]]
    assert os.listdir(image.parent) == ["disk.img"]  # no snapshot left behind
