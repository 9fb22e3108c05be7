"""Plain ASGI middleware (no per-request body wrapping as in Starlette's
BaseHTTPMiddleware, which slows large uploads): body size limit, metrics and logs."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi.responses import JSONResponse

from cdpcore.api import MAX_UPLOAD_BYTES

from .metrics import Metrics

log = logging.getLogger("cdp.server")

#: JSON bodies (ID lists, commits) are far smaller than uploads; one bound for all.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 1024 * 1024
#: Methods with a label of their own in the request duration metric.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class _TooLarge(Exception):
    pass


async def _answer(send: Any, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status)({"type": "http"}, None, send)  # type: ignore[arg-type]


class BodyLimit:
    """413 for a body over MAX_BODY_BYTES: from its Content-Length before reading
    anything, or as soon as a chunked body passes the bound."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_large = f"request body larger than {MAX_BODY_BYTES} bytes"
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _answer(send, 413, too_large)
            return
        seen = 0
        started = exceeded = False

        async def counting_receive() -> Any:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    exceeded = True
                    raise _TooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if exceeded and not started:
                # The app caught _TooLarge and answers something else (FastAPI: 400
                # "There was an error parsing the body" for a JSON body): 413 instead.
                started = True
                await _answer(send, 413, too_large)
            if exceeded:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _answer(send, 413, too_large)


class Observe:
    """Metrics (durations per route, bytes in, errors) and one JSON log line per request:
    method, path, status, milliseconds, client address. Never headers: no tokens."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        received = 0

        async def counting_receive() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path")})
            if not status:
                status = 500
                await _answer(send, 500, "internal server error (see the server log)")
        elapsed = time.perf_counter() - start
        route = getattr(scope.get("route"), "path", "other")
        # Known methods only: any token is a method to HTTP/1.1, and each new label value
        # would be a series kept for good, for anyone without a token to add.
        method = scope["method"] if scope["method"] in _METHODS else "other"
        m = self.metrics
        m.duration.labels(method, route).observe(elapsed)
        m.bytes_in.inc(received)
        if status >= 400:
            m.errors.labels(str(status)).inc()
        client = scope.get("client")
        log.info("request", extra={"method": scope["method"], "path": scope.get("path"),
                                   "status": status, "ms": round(elapsed * 1000, 2),
                                   "client": client[0] if client else None})
