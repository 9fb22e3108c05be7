"""Record stream versions of uploads: this server checks and keeps each object's checksum
in the algorithm it was uploaded with (BLAKE3 from current clients, SHA-256 from older
agents), and a current client facing a server that predates version 2 falls back to
version 1 once, by the server's 415."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import requests

from cdpcore import records
from cdpcore.api import API_PREFIX, RECORDS_MEDIA_TYPE, UPLOAD_MEDIA_TYPE, ObjectKind, Role
from cdpcore.client import CdpClient
from cdpcore.errors import NotFoundError, ServerError

from .points import flip_stored_byte, new_codec


def _post(server, token: str, body: bytes, ctype: str) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(f"{server.url}{API_PREFIX}/hosts/web1/chunks", data=body,
                         verify=str(server.ca_path), timeout=60,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": ctype})


def test_version_1_uploads_are_checked_and_kept_with_sha256(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    codec = new_codec()
    (old_id, old_blob), (new_id, new_blob) = (codec.seal_block(os.urandom(4096))
                                              for _ in range(2))
    assert old_blob is not None and new_blob is not None
    v1 = records.encode_record(old_id, old_blob, records.Checksum.SHA256)
    resp = _post(cdp_server, tokens[Role.agent], v1, RECORDS_MEDIA_TYPE)
    assert (resp.status_code, resp.json()) == (200, {"stored": 1, "duplicates": 0})
    # a version 2 stream sent as version 1 does not match its checksums
    resp = _post(cdp_server, tokens[Role.agent], records.encode_record(new_id, new_blob),
                 RECORDS_MEDIA_TYPE)
    assert resp.status_code == 422
    assert resp.json()["detail"] == f"record {new_id.hex()[:16]}… does not match its checksum"
    agent.upload("web1", ObjectKind.chunks, [(new_id, new_blob)])  # version 2
    # each is read back against its own algorithm's checksum ...
    assert agent.fetch("web1", ObjectKind.chunks, [old_id, new_id]) == {
        old_id: old_blob, new_id: new_blob}
    # ... and damage to either is found
    flip_stored_byte(cdp_server.data_dir, "chunks", old_id)
    with pytest.raises(NotFoundError, match="0 chunks missing and 1 damaged"):
        agent.fetch("web1", ObjectKind.chunks, [old_id, new_id])


class _OlderServer(BaseHTTPRequestHandler):
    """A stand-in for a server of before record streams of version 2 (its real code is
    not installed here): 415 for anything but version 1 uploads, which it checks."""

    seen: ClassVar[list[str]] = []
    accepts: ClassVar[tuple[str, ...]] = (RECORDS_MEDIA_TYPE,)

    def do_POST(self) -> None:
        ctype = self.headers.get("Content-Type", "")
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(ctype)
        if ctype in self.accepts:
            count = len(list(records.decode_records(body, records.Checksum.SHA256)))
            self._answer(200, {"stored": count, "duplicates": 0})
        else:
            self._answer(415, {"detail": f"uploads must be {RECORDS_MEDIA_TYPE}"})

    def _answer(self, status: int, doc: dict[str, object]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def older_server() -> Iterator[str]:
    _OlderServer.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _OlderServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_client_falls_back_to_version_1_once(older_server: str) -> None:
    client = CdpClient(older_server, "token", retries=0)
    items = [(os.urandom(32), os.urandom(100)) for _ in range(3)]
    assert client.upload("web1", ObjectKind.chunks, items).stored == 3
    assert client.upload("web1", ObjectKind.chunks, items[:1]).stored == 1
    assert _OlderServer.seen == [UPLOAD_MEDIA_TYPE, RECORDS_MEDIA_TYPE, RECORDS_MEDIA_TYPE]


def test_client_reports_a_server_refusing_both_versions(older_server: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_OlderServer, "accepts", ())
    client = CdpClient(older_server, "token", retries=0)
    with pytest.raises(ServerError, match="415 uploads must be application/x-cdp-records"):
        client.upload("web1", ObjectKind.chunks, [(os.urandom(32), b"blob")])
    assert _OlderServer.seen == [UPLOAD_MEDIA_TYPE, RECORDS_MEDIA_TYPE]
