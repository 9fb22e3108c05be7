"""A hostile CDP server for the rescue client: an HTTPS front (the real server's
certificate) that forwards every request to a real server and tampers with one kind of
answer: absurd volume sizes, path-like volume names, another chunk's bytes in place of
the one asked for (its record checksum recomputed, so only the crypto can tell), swapped
index pages, absurd record lengths, and answers that are not JSON or nested too deeply (a
proxy's error page, a parser's recursion)."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from cdpcore import records
from cdpcore.index import Geometry

Tamper = Callable[[str, str, bytes], bytes]


def _swap_blobs(body: bytes) -> bytes:
    """Every record gets the next record's blob (checksum recomputed); a lone record gets
    its own blob with one byte changed."""
    recs = list(records.decode_records(body))
    if not recs:
        return body
    blobs = [b for _, _, b in recs]
    shifted = blobs[1:] + blobs[:1] if len(blobs) > 1 else \
        [blobs[0][:-1] + bytes([blobs[0][-1] ^ 1])]
    return records.encode_records((oid, blob) for (oid, _, _), blob in zip(recs, shifted,
                                                                             strict=True))


def tamper_volume_size(path: str, method: str, body: bytes) -> bytes:
    if method == "GET" and "/points/" in path:
        doc = json.loads(body)
        vol = doc["volumes"][0]
        # an absurd size with the matching tree height: only the sealed manifest can tell
        vol["size"] = 2**40
        vol["height"] = Geometry(size=vol["size"], block_size=vol["block_size"]).height
        return json.dumps(doc).encode()
    return body


def tamper_volume_name(path: str, method: str, body: bytes) -> bytes:
    if method == "GET" and "/points/" in path:
        doc = json.loads(body)
        doc["volumes"][0]["name"] = "../../../etc/passwd"
        return json.dumps(doc).encode()
    return body


def tamper_chunks(path: str, method: str, body: bytes) -> bytes:
    return _swap_blobs(body) if path.endswith("/chunks/fetch") else body


def tamper_pages(path: str, method: str, body: bytes) -> bytes:
    return _swap_blobs(body) if path.endswith("/pages/fetch") else body


def tamper_record_length(path: str, method: str, body: bytes) -> bytes:
    if path.endswith("/fetch"):
        return records.CURRENT.header.pack(bytes(32), bytes(records.CURRENT.checksum_size),
                                           2**32 - 1)
    return body


def tamper_point_not_json(path: str, method: str, body: bytes) -> bytes:
    return b"<html>proxy error</html>" if method == "GET" and "/points/" in path else body


def tamper_point_nested(path: str, method: str, body: bytes) -> bytes:
    deep = b"[" * 100_000 + b"]" * 100_000
    return deep if method == "GET" and "/points/" in path else body


def tamper_listing_nested(path: str, method: str, body: bytes) -> bytes:
    deep = b"[" * 100_000 + b"]" * 100_000
    return deep if method == "GET" and path.split("?")[0].endswith("/points") else body


TAMPERS: dict[str, Tamper] = {
    "volume-size": tamper_volume_size, "volume-name": tamper_volume_name,
    "chunk-contents": tamper_chunks, "page-contents": tamper_pages,
    "record-length": tamper_record_length, "point-not-json": tamper_point_not_json,
    "point-nested": tamper_point_nested, "listing-nested": tamper_listing_nested,
}


class HostileServer:
    def __init__(self, upstream: str, ca: str, cert: str, key: str, tamper: Tamper) -> None:
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("authorization", "content-type", "accept")}
                resp = requests.request(self.command, upstream + self.path, data=data,
                                        headers=headers, verify=ca, timeout=60)
                body = resp.content
                if resp.ok:
                    body = tamper(self.path.split("?")[0], self.command, body)
                    outer.calls += 1
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("Content-Type", ""))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)
