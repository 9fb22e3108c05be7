"""The FastAPI application: routes, error answers, request limits, metrics and logs."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import cdpcore
from cdpcore.api import API_PREFIX
from cdpcore.errors import CdpError, ServerError

from .datastore import Datastore
from .errors import Conflict
from .listing import Listings
from .metrics import Metrics
from .middleware import BodyLimit, Observe
from .routes import router
from .sqlite_catalog import LIST_CACHE_HOSTS


def create_app(ds: Datastore, *, grace: float = 24 * 3600) -> FastAPI:
    app = FastAPI(title="CDP server", version=cdpcore.__version__,
                  description="Stores block-level recovery points; see docs/API.md.",
                  openapi_url="/openapi.json", docs_url="/docs", redoc_url=None)
    app.state.ds = ds
    app.state.grace = grace
    app.state.listings = Listings(ds.catalog, LIST_CACHE_HOSTS)
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

    # Outermost last: Observe sees the 413 answers of BodyLimit too.
    app.add_middleware(BodyLimit)
    app.add_middleware(Observe, metrics=metrics)
    return app

