"""What the client repeats after a lost answer: reads and idempotent writes are retried;
deletions and the admin jobs are not (a retry would answer 404 for what was done, or
start a second run of a long job), and the error says the request may have been carried
out. The server is a stand-in on loopback that takes each request and closes the
connection without answering, as a server killed or a network cut after the work."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from cdpcore.client import CdpClient
from cdpcore.errors import ConnectionFailed


class _AnswerLost(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _lose(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.close_connection = True  # the work is done, the answer never comes

    do_GET = do_POST = do_DELETE = do_PUT = _lose


@pytest.fixture
def lossy() -> Iterator[CdpClient]:
    _AnswerLost.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnswerLost)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield CdpClient(f"http://127.0.0.1:{httpd.server_address[1]}", "t", retries=2,
                        backoff=0.0)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("call", "request_line"), [
    (lambda c: c.delete_point("web1", "ab" * 16), f"DELETE /api/v1/hosts/web1/points/{'ab' * 16}"),
    (lambda c: c.remove_host("web1"), "DELETE /api/v1/hosts/web1"),
    (lambda c: c.prune("web1"), "POST /api/v1/admin/prune?host=web1"),
    (lambda c: c.gc(), "POST /api/v1/admin/gc"),
    (lambda c: c.verify(), "POST /api/v1/admin/verify"),
])
def test_deletions_and_jobs_are_sent_once_after_a_lost_answer(
        lossy: CdpClient, call: Callable[[CdpClient], Any], request_line: str) -> None:
    with pytest.raises(ConnectionFailed) as exc:
        call(lossy)
    assert _AnswerLost.seen == [request_line]
    assert "is not retried: it may have been carried out before its answer was lost" \
        in str(exc.value)


def test_reads_are_retried_after_a_lost_answer(lossy: CdpClient) -> None:
    with pytest.raises(ConnectionFailed) as exc:
        lossy.points("web1")
    assert _AnswerLost.seen == ["GET /api/v1/hosts/web1/points"] * 3  # retries=2
    assert "not retried" not in str(exc.value)
