"""The FastAPI application: routes, error answers, request limits, metrics and logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import cdpcore
from cdpcore.api import API_PREFIX, MAX_UPLOAD_BYTES
from cdpcore.errors import CdpError, ServerError

from .datastore import Datastore
from .errors import Conflict
from .metrics import Metrics
from .routes import router

log = logging.getLogger("cdp.server")

#: JSON bodies (ID lists, commits) are far smaller than uploads; one bound for all.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 1024 * 1024


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a body over MAX_BODY_BYTES, from its Content-Length before
    reading anything, or as soon as a chunked body passes the bound."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _too_large(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise _TooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _too_large(send)


async def _too_large(send: Any) -> None:
    resp = JSONResponse({"detail": f"request body larger than {MAX_BODY_BYTES} bytes"}, 413)
    await resp({"type": "http"}, None, send)  # type: ignore[arg-type]


def create_app(ds: Datastore, *, grace: float = 24 * 3600) -> FastAPI:
    app = FastAPI(title="CDP server", version=cdpcore.__version__,
                  description="Stores block-level recovery points; see docs/API.md.",
                  openapi_url="/openapi.json", docs_url="/docs", redoc_url=None)
    app.state.ds = ds
    app.state.grace = grace
    app.state.metrics = metrics = Metrics()
    app.include_router(router, prefix=API_PREFIX)

    @app.get(API_PREFIX + "/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return PlainTextResponse(generate_latest(metrics.registry),
                                 media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(exc.body or {"detail": str(exc)}, status_code=409)

    @app.exception_handler(ServerError)
    async def server_error(request: Request, exc: ServerError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status or 500)

    @app.exception_handler(CdpError)
    async def cdp_error(request: Request, exc: CdpError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                         for e in exc.errors()[:10])
        return JSONResponse({"detail": f"invalid request: {msgs}"}, status_code=422)

    @app.middleware("http")
    async def observe(request: Request,
                      call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            log.exception("unhandled error", extra={"path": request.url.path})
            response = JSONResponse({"detail": "internal server error (see the server log)"},
                                    status_code=500)
        elapsed = time.perf_counter() - start
        route = request.scope.get("route")
        metrics.duration.labels(request.method, getattr(route, "path", "other")).observe(elapsed)
        metrics.bytes_in.inc(int(request.headers.get("content-length") or 0))
        if response.status_code >= 400:
            metrics.errors.labels(str(response.status_code)).inc()
        log.info("request", extra={"method": request.method, "path": request.url.path,
                                   "status": response.status_code,
                                   "ms": round(elapsed * 1000, 2),
                                   "client": request.client.host if request.client else None})
        return response

    app.add_middleware(BodyLimit)
    return app

