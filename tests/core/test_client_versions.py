"""The client against a server that predates v2 records (cdpcore.records): it uploads v1
records and reads v1 fetch answers, also when the server behind its URL is rolled back
while it runs. The older server is a stand-in on loopback that answers as that release
did (its /health has no `records`, it accepts only application/x-cdp-records and answers
fetches in it), switched to the current behaviour where a test says so; the current
server's side of the negotiation is tested against the real server in
tests/server/test_objects.py."""

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
from cdpcore.errors import ServerError


class _OlderServer(http.server.BaseHTTPRequestHandler):
    stored: ClassVar[dict[bytes, bytes]] = {}
    upload_types: ClassVar[list[str]] = []
    #: what /health lists and what uploads may use: the older release's, unless changed
    health_records: ClassVar[list[int] | None] = None
    takes: ClassVar[set[str]] = {records.V1.media_type}

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
        doc: dict[str, Any] = {"status": "ok", "version": "0.9"}
        if self.health_records is not None:
            doc["records"] = self.health_records
        self._answer(json.dumps(doc).encode(), "application/json")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/fetch"):
            ids = [bytes.fromhex(h) for h in json.loads(body)["ids"]]
            self._answer(records.encode_records([(i, self.stored[i]) for i in ids], records.V1),
                         records.V1.media_type)
            return
        media_type = self.headers["Content-Type"]
        self.upload_types.append(media_type)
        if media_type not in self.takes:
            self._answer(json.dumps({"detail": f"uploads must be {records.V1.media_type}"})
                         .encode(), "application/json", 415)
            return
        form = records.BY_MEDIA_TYPE[media_type]
        items = [(oid, blob) for oid, _, blob in records.decode_records(body, form)]
        self.stored.update(items)
        self._answer(json.dumps({"stored": len(items), "duplicates": 0}).encode(),
                     "application/json")


@pytest.fixture
def older_server() -> Iterator[str]:
    _OlderServer.stored, _OlderServer.upload_types = {}, []
    _OlderServer.health_records, _OlderServer.takes = None, {records.V1.media_type}
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


def test_client_goes_back_to_v1_when_the_server_is_rolled_back(older_server: str) -> None:
    _OlderServer.health_records = [1, 2]
    _OlderServer.takes = {records.V1.media_type, records.V2.media_type}
    client = CdpClient(older_server, "token", retries=0)
    items = [(os.urandom(32), os.urandom(100)) for _ in range(2)]
    assert client.upload("web1", ObjectKind.chunks, items[:1]).stored == 1
    assert client.upload_format() is records.V2
    # The server behind the URL is now the older release: its 415 makes the client ask
    # /health again and send the same request as v1.
    _OlderServer.health_records, _OlderServer.takes = None, {records.V1.media_type}
    assert client.upload("web1", ObjectKind.chunks, items[1:]).stored == 1
    assert _OlderServer.upload_types == [records.V2.media_type, records.V2.media_type,
                                         records.V1.media_type]
    assert _OlderServer.stored == dict(items)


def test_a_415_for_records_the_server_lists_is_an_error(older_server: str) -> None:
    _OlderServer.health_records = [1, 2]  # says it takes v2, refuses it all the same
    client = CdpClient(older_server, "token", retries=0)
    with pytest.raises(ServerError, match="refuses application/x-cdp-records-v2 uploads "
                                          "although its /health lists them"):
        client.upload("web1", ObjectKind.chunks, [(os.urandom(32), b"blob")])
    assert _OlderServer.stored == {}
