"""The client's stop hook (`stop_grace`, the agent's stop flag): once it names a grace, no
request is tried again, and a try the server leaves unanswered is cut that many seconds
later (its connection shut down), raising StopRequested, over plain HTTP and during a TLS
handshake, in this process and in a forked child. Without a stop nothing changes: the
client's own timeout and tries. The servers are stand-ins on loopback."""

from __future__ import annotations

import http.server
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from cdpcore.client import CdpClient
from cdpcore.errors import ConnectionFailed, ServerError, StopRequested

#: Far below the client's 5 tries of 120 s, far above the grace and the watcher's look.
BOUND = 15.0


class _Silent:
    """A TCP listener that accepts every connection, reads nothing and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.accepted) < n:
            assert time.monotonic() < deadline, "the client never connected"
            time.sleep(0.02)

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[_Silent]:
    server = _Silent()
    try:
        yield server
    finally:
        server.close()


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException | Any]]:
    outcome: list[BaseException | Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_stop_cuts_a_request_the_server_never_answers(silent: _Silent, scheme: str) -> None:
    """With the client's defaults (5 tries of up to 120 s) the request would wait up to
    10 minutes; the stop ends it after the grace, with no second try. Over https the try
    waits in the TLS handshake, on a socket the SSLSocket has already taken over."""
    stop = threading.Event()
    client = CdpClient(f"{scheme}://127.0.0.1:{silent.port}", "t",
                       stop_grace=lambda: 1.0 if stop.is_set() else None)
    thread, outcome = _in_thread(lambda: client.points("web1"))
    silent.wait_for(1)
    time.sleep(0.5)  # the request waits for its answer
    stopped = time.monotonic()
    stop.set()
    thread.join(BOUND)
    took = time.monotonic() - stopped
    assert not thread.is_alive(), f"the request went on {BOUND:.0f} s after the stop"
    assert len(outcome) == 1 and isinstance(outcome[0], StopRequested), outcome
    assert "given up, stopping" in str(outcome[0])
    assert 1.0 <= took < 3.0
    assert len(silent.accepted) == 1  # not tried again


class _Failing(http.server.BaseHTTPRequestHandler):
    """Answers 503 (a restarting server) or drops the connection unanswered; the first
    request sets `stop`."""

    seen: ClassVar[int] = 0
    drop: ClassVar[bool] = False
    stop: ClassVar[threading.Event] = threading.Event()

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).seen += 1
        self.stop.set()
        if self.drop:
            self.close_connection = True
            return
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.mark.parametrize("drop", [False, True], ids=["503", "dropped"])
def test_a_stop_is_not_tried_again(drop: bool) -> None:
    _Failing.seen, _Failing.drop, _Failing.stop = 0, drop, threading.Event()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = CdpClient(f"http://127.0.0.1:{httpd.server_address[1]}", "t", backoff=0.0,
                           stop_grace=lambda: 0.0 if _Failing.stop.is_set() else None)
        # The stop comes while the try is in flight: the watcher may cut it (grace 0)
        # before its fault arrives ("given up"), or the fault comes first ("not tried
        # again"). Either way there is no second try.
        with pytest.raises(StopRequested, match=r"(not tried again|given up), stopping"):
            client.points("web1")
        assert _Failing.seen == 1
        # without the stop, the same faults are tried again as before
        _Failing.seen = 0
        unstoppable = CdpClient(f"http://127.0.0.1:{httpd.server_address[1]}", "t",
                                backoff=0.0, retries=2, stop_grace=lambda: None)
        with pytest.raises(ConnectionFailed if drop else ServerError) as exc:
            unstoppable.points("web1")
        assert not isinstance(exc.value, StopRequested)
        assert _Failing.seen == 3
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_without_a_stop_the_clients_own_timeout_and_tries_hold(silent: _Silent) -> None:
    client = CdpClient(f"http://127.0.0.1:{silent.port}", "t", timeout=0.5, retries=1,
                       backoff=0.0, stop_grace=lambda: None)
    with pytest.raises(ConnectionFailed, match="timed out"):
        client.points("web1")
    assert len(silent.accepted) == 2


class _Slow(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(1.0)
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_an_answer_within_the_grace_still_arrives() -> None:
    """After SIGTERM the agent finishes the point: a server that answers, if slowly, is
    not cut off, also for requests made after the stop."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = CdpClient(f"http://127.0.0.1:{httpd.server_address[1]}", "t",
                           stop_grace=lambda: 3.0)
        assert client.points("web1") == []
        assert client.points("web1") == []
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_stop_reaches_a_request_of_a_forked_child(silent: _Silent) -> None:
    """The agent's sealing workers upload through the client they inherit: the stop flag,
    in shared memory, reaches their requests too (the child watches its own tries)."""
    flag = multiprocessing.RawValue("b", 0)
    client = CdpClient(f"https://127.0.0.1:{silent.port}", "t",
                       stop_grace=lambda: 1.0 if flag.value else None)
    pid = os.fork()
    if pid == 0:  # the child: its exit status says what the request raised
        code = 3
        try:
            client.points("web1")
        except StopRequested:
            code = 0
        except BaseException:
            code = 2
        os._exit(code)
    done = (0, 0)
    try:
        silent.wait_for(1)
        time.sleep(0.5)
        stopped = time.monotonic()
        flag.value = 1
        deadline = stopped + BOUND
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, "the child's request went on after the stop"
            time.sleep(0.05)
        took = time.monotonic() - stopped
    finally:
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert took < 3.0


def test_a_second_stop_with_less_grace_cuts_sooner(silent: _Silent) -> None:
    """SIGTERM, whose grace lets a server finish the point, then Ctrl-C, which abandons it:
    the try is cut at the shorter grace, read again at every look."""
    grace: list[float | None] = [None]
    client = CdpClient(f"http://127.0.0.1:{silent.port}", "t", stop_grace=lambda: grace[0])
    thread, outcome = _in_thread(lambda: client.points("web1"))
    silent.wait_for(1)
    grace[0] = 60.0
    time.sleep(1.0)
    assert thread.is_alive()  # within SIGTERM's grace
    stopped = time.monotonic()
    grace[0] = 0.0
    thread.join(BOUND)
    assert not thread.is_alive() and isinstance(outcome[0], StopRequested), outcome
    assert time.monotonic() - stopped < 2.0
