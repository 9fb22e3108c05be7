"""The client against a server that predates v2 records (cdpcore.records): it uploads v1
records and reads v1 fetch answers. The older server is a stand-in on loopback that
answers as that release did (its /health has no `records`, it accepts only
application/x-cdp-records and answers fetches in it); the current server's side of the
negotiation is tested against the real server in tests/server/test_objects.py."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from cdpcore import records
from cdpcore.api import API_PREFIX, ObjectKind
from cdpcore.client import CdpClient


class _OlderServer(http.server.BaseHTTPRequestHandler):
    stored: ClassVar[dict[bytes, bytes]] = {}
    upload_types: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:
        pass  # requests are not test output

    def _answer(self, body: bytes, media_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        assert self.path == API_PREFIX + "/health"
        self._answer(json.dumps({"status": "ok", "version": "0.9"}).encode(),
                     "application/json")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/fetch"):
            ids = [bytes.fromhex(h) for h in json.loads(body)["ids"]]
            self._answer(records.encode_records([(i, self.stored[i]) for i in ids], records.V1),
                         records.V1.media_type)
            return
        media_type = self.headers["Content-Type"]
        self.upload_types.append(media_type)
        if media_type != records.V1.media_type:
            self._answer(json.dumps({"detail": f"uploads must be {records.V1.media_type}"})
                         .encode(), "application/json", 415)
            return
        items = [(oid, blob) for oid, _, blob in records.decode_records(body, records.V1)]
        self.stored.update(items)
        self._answer(json.dumps({"stored": len(items), "duplicates": 0}).encode(),
                     "application/json")


@pytest.fixture
def older_server() -> Iterator[str]:
    _OlderServer.stored, _OlderServer.upload_types = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OlderServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_client_speaks_v1_records_to_a_server_that_predates_v2(older_server: str) -> None:
    client = CdpClient(older_server, "token", retries=0)
    items = [(os.urandom(32), os.urandom(n)) for n in (10, 5000, 0)]
    result = client.upload("web1", ObjectKind.chunks, items)
    assert (result.stored, result.stored_bytes) == (3, None)
    assert client.upload("web1", ObjectKind.chunks, items[:1]).stored == 1
    assert _OlderServer.upload_types == [records.V1.media_type] * 2
    assert client.upload_format() is records.V1
    assert client.fetch("web1", ObjectKind.chunks, [oid for oid, _ in items]) == dict(items)
