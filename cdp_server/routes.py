"""The HTTP endpoints of cdpcore.api: thin handlers over the datastore and its jobs."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ConfigDict

import cdpcore
from cdpcore import records
from cdpcore.api import (
    MAX_UPLOAD_BYTES,
    CommitRequest,
    GcReport,
    Health,
    HostCreated,
    HostInfo,
    IdList,
    ObjectKind,
    PointDetail,
    PointInfo,
    PruneReport,
    Retention,
    Role,
    TokenIssued,
    TokenRequest,
    UploadResult,
    VerifyReport,
)
from cdpcore.errors import FormatError
from cdpcore.keys import WrappedKey

from . import commit as commits
from . import compress, jobs
from .auth import ADMIN, READ, WRITE, Principal, principal, require_admin, require_host
from .catalog import PointRow
from .datastore import Datastore
from .errors import BadRequest
from .listing import Listings
from .metrics import Metrics

router = APIRouter()
Who = Annotated[Principal, Depends(principal)]


def _ds(request: Request) -> Datastore:
    ds: Datastore = request.app.state.ds
    return ds


def _listings(request: Request) -> Listings:
    listings: Listings = request.app.state.listings
    return listings


def _metrics(request: Request) -> Metrics:
    m: Metrics = request.app.state.metrics
    return m


def _ids(body: IdList) -> list[bytes]:
    out = []
    for h in body.ids:
        if len(h) != 64 or h.strip("0123456789abcdef"):
            raise BadRequest(f"bad ID {h[:80]!r}: 64 lower-case hex digits expected", 422)
        out.append(bytes.fromhex(h))
    return out


def _host_info(ds: Datastore, name: str) -> HostInfo:
    count, latest, has_key = ds.catalog.host_summary(name)
    return HostInfo(name=name, points=count, latest=latest, has_key=has_key,
                    retired=ds.catalog.host_retired(name))


@router.get("/health", response_model=Health)
def health() -> Health:
    return Health(status="ok", version=cdpcore.__version__,
                  records=sorted(form.version for form in records.BY_MEDIA_TYPE.values()))


@router.get("/hosts", response_model=list[HostInfo])
def list_hosts(request: Request, who: Who) -> list[HostInfo]:
    ds = _ds(request)
    names = ds.catalog.host_names() if who.host is None else [who.host]
    return [_host_info(ds, n) for n in names]


@router.post("/hosts", response_model=HostCreated, status_code=201)
def create_host(request: Request, who: Who, body: dict[str, str]) -> HostCreated:
    require_admin(who)
    name = body.get("name", "")
    try:
        tokens = _ds(request).add_host(name)
    except FormatError as exc:
        raise BadRequest(str(exc), 422) from None
    return HostCreated(name=name, tokens=tokens)


@router.post("/hosts/{host}/tokens", response_model=TokenIssued, status_code=201)
def reissue_token(request: Request, who: Who, host: str, body: TokenRequest) -> TokenIssued:
    ds = _ds(request)
    require_host(ds, who, host, ADMIN)
    if body.role is Role.admin:
        raise BadRequest("admin tokens belong to no host: `cdp-server admin-token` on the "
                         "server issues one", 422)
    token, revoked = ds.reissue_token(host, body.role)
    return TokenIssued(host=host, role=body.role, token=token, revoked=revoked)


@router.delete("/hosts/{host}")
def remove_host(request: Request, who: Who, host: str) -> dict[str, Any]:
    ds = _ds(request)
    require_host(ds, who, host, ADMIN)
    deleted = ds.remove_host(host)
    _listings(request).changed(host)
    return {"removed": host, "points_deleted": deleted}


@router.get("/hosts/{host}", response_model=HostInfo)
def get_host(request: Request, who: Who, host: str) -> HostInfo:
    require_host(_ds(request), who, host, READ)
    return _host_info(_ds(request), host)


@router.get("/hosts/{host}/key")
def get_key(request: Request, who: Who, host: str) -> Any:
    ds = _ds(request)
    require_host(ds, who, host, READ)
    key = ds.catalog.get_key(host)
    if key is None:
        raise HTTPException(404, f"host {host!r} has no key yet")
    return json.loads(key)


@router.put("/hosts/{host}/key", responses={201: {}, 409: {}})
def put_key(request: Request, who: Who, host: str, doc: dict[str, Any]) -> JSONResponse:
    ds = _ds(request)
    require_host(ds, who, host, WRITE, live=True)
    try:
        key = WrappedKey.from_json(doc)
    except FormatError as exc:
        raise BadRequest(str(exc), 422) from None
    created = ds.catalog.put_key(host, json.dumps(key.to_json(), sort_keys=True))
    return JSONResponse({"stored": created}, status_code=201 if created else 200)


@router.post("/hosts/{host}/{kind}/missing", response_model=IdList)
def missing(request: Request, who: Who, host: str, kind: ObjectKind, body: IdList) -> IdList:
    ds = _ds(request)
    require_host(ds, who, host, WRITE, live=True)
    return IdList(ids=[i.hex() for i in ds.missing(host, kind, _ids(body))])


#: Both record stream versions, for the OpenAPI document.
_RECORDS_CONTENT: dict[str, Any] = {form.media_type: {} for form in records.BY_MEDIA_TYPE.values()}


def _answer_format(request: Request) -> records.RecordFormat:
    """v2 records for a client whose Accept names them (with a q-value above 0); v1 for
    the others: clients that predate v2 accept `*/*` but read only v1."""
    for media_range in request.headers.get("accept", "").split(","):
        media_type, *params = (p.strip().lower() for p in media_range.split(";"))
        if media_type == records.V2.media_type and _quality(params) > 0:
            return records.V2
    return records.V1


def _quality(params: list[str]) -> float:
    """A media range's q-value (RFC 9110: 1 if absent; an unreadable one counts as 0)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


@router.post("/hosts/{host}/{kind}/fetch", responses={200: {"content": _RECORDS_CONTENT}})
def fetch(request: Request, who: Who, host: str, kind: ObjectKind, body: IdList) -> Response:
    ds = _ds(request)
    require_host(ds, who, host, READ)
    form = _answer_format(request)
    data = records.encode_checked_records(ds.fetch(host, kind, _ids(body)), form)
    _metrics(request).bytes_out.inc(len(data))
    return Response(data, media_type=form.media_type, headers={"Vary": "Accept"})


@router.post("/hosts/{host}/points", response_model=PointInfo, status_code=201,
             responses={200: {"model": PointInfo}, 409: {}})
def commit(request: Request, who: Who, host: str, req: CommitRequest) -> JSONResponse:
    ds = _ds(request)
    require_host(ds, who, host, WRITE)
    info, created = commits.commit(ds, host, req)
    if created:
        _metrics(request).points.inc()
        _listings(request).changed(host)
    return JSONResponse(info.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("/hosts/{host}/points", response_model=list[PointInfo])
def list_points(request: Request, who: Who, host: str,
                limit: Annotated[int | None, Query(ge=0, le=10**9)] = None,
                before: Annotated[float | None, Query(allow_inf_nan=False)] = None,
                after: Annotated[float | None, Query(allow_inf_nan=False)] = None) -> Response:
    ds = _ds(request)
    require_host(ds, who, host, READ)
    gzip = compress.accepts_gzip(request.headers.get("accept-encoding", ""))
    if limit is None and before is None and after is None:
        body, packed = _listings(request).full(host, gzip=gzip)
    else:
        body = ds.catalog.points_json(host, limit, before, after)
        packed = gzip and len(body) >= compress.MIN_BYTES
        if packed:
            body = compress.pack(body)
    headers = {"Vary": "Accept-Encoding"}
    if packed:
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type="application/json", headers=headers)


def _point_row(ds: Datastore, host: str, point_id: str) -> PointRow:
    row = ds.catalog.point(host, point_id)
    if row is None:
        raise HTTPException(404, f"host {host!r} has no point {point_id}")
    return row


@router.get("/hosts/{host}/points/{point_id}", response_model=PointDetail)
def get_point(request: Request, who: Who, host: str, point_id: str) -> PointDetail:
    ds = _ds(request)
    require_host(ds, who, host, READ)
    return commits.point_detail(_point_row(ds, host, point_id))


@router.get("/hosts/{host}/damaged", response_model=IdList)
def damaged(request: Request, who: Who, host: str) -> IdList:
    ds = _ds(request)
    require_host(ds, who, host, READ)
    return IdList.model_construct(ids=[i.hex() for i in ds.catalog.damaged(host)])


@router.get("/hosts/{host}/retention", response_model=Retention)
def get_retention(request: Request, who: Who, host: str) -> Retention:
    ds = _ds(request)
    require_host(ds, who, host, ADMIN)
    return ds.catalog.retention(host)


class RetentionRules(Retention):
    """The body of a retention PUT. Unknown fields are refused: Retention ignores them, so
    `{"keep_lats": 3}` was stored as no rules at all, which keep every point."""

    model_config = ConfigDict(extra="forbid")


@router.put("/hosts/{host}/retention", response_model=Retention)
def put_retention(request: Request, who: Who, host: str, body: RetentionRules) -> Retention:
    ds = _ds(request)
    require_host(ds, who, host, ADMIN, live=True)
    rules = Retention.model_validate(body.model_dump())
    ds.catalog.set_retention(host, rules)
    return rules


def _pin(request: Request, who: Principal, host: str, point_id: str, pinned: bool) -> dict[str, bool]:
    ds = _ds(request)
    require_host(ds, who, host, ADMIN)
    _point_row(ds, host, point_id)
    if not ds.catalog.set_pinned(host, point_id, pinned):  # pruned since the check
        raise HTTPException(404, f"host {host!r} has no point {point_id}")
    _listings(request).changed(host)
    return {"pinned": pinned}


@router.put("/hosts/{host}/points/{point_id}/pin")
def pin(request: Request, who: Who, host: str, point_id: str) -> dict[str, bool]:
    return _pin(request, who, host, point_id, True)


@router.delete("/hosts/{host}/points/{point_id}/pin")
def unpin(request: Request, who: Who, host: str, point_id: str) -> dict[str, bool]:
    return _pin(request, who, host, point_id, False)


@router.delete("/hosts/{host}/points/{point_id}")
def delete_point(request: Request, who: Who, host: str, point_id: str) -> dict[str, str]:
    ds = _ds(request)
    require_host(ds, who, host, ADMIN)
    _point_row(ds, host, point_id)
    ds.catalog.delete_points(host, [point_id])
    _listings(request).changed(host)
    return {"deleted": point_id}


@router.post("/admin/prune", response_model=PruneReport)
def prune(request: Request, who: Who, host: str | None = None) -> PruneReport:
    require_admin(who)
    ds = _ds(request)
    if host is not None and not ds.catalog.host_exists(host):
        raise HTTPException(404, f"no host {host!r}")
    return jobs.prune(ds, host)


@router.post("/admin/gc", response_model=GcReport)
def gc(request: Request, who: Who,
       grace: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None) -> GcReport:
    require_admin(who)
    return jobs.gc(_ds(request), request.app.state.grace if grace is None else grace)


@router.post("/admin/verify", response_model=VerifyReport)
def verify(request: Request, who: Who) -> VerifyReport:
    require_admin(who)
    return jobs.verify(_ds(request))


def _upload_parts(ds: Datastore, host: str, kind: ObjectKind, parts: list[bytes],
                  form: records.RecordFormat) -> UploadResult:
    return ds.upload(host, kind, b"".join(parts), form)


# Declared last: "/hosts/{host}/{kind}" would otherwise capture "/hosts/{host}/points".
@router.post("/hosts/{host}/{kind}", response_model=UploadResult,
             openapi_extra={"requestBody": {"content": _RECORDS_CONTENT}})
async def upload(request: Request, who: Who, host: str, kind: ObjectKind) -> UploadResult:
    ds = _ds(request)
    await run_in_threadpool(lambda: require_host(ds, who, host, WRITE, live=True))
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    form = records.BY_MEDIA_TYPE.get(media_type)
    if form is None:
        raise BadRequest(f"uploads must be {records.CURRENT.media_type} (or the older "
                         f"{records.V1.media_type}), not {media_type or 'untyped'}", 415)
    # Parts joined once, in the worker thread: growing a buffer part by part on the event
    # loop copied each upload several times while holding up every other connection.
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        parts.append(part)
        size += len(part)
        if size > MAX_UPLOAD_BYTES:
            raise BadRequest(f"upload larger than {MAX_UPLOAD_BYTES} bytes", 413)
    result: UploadResult = await run_in_threadpool(_upload_parts, ds, host, kind, parts,
                                                   form)
    m = _metrics(request)
    m.objects_stored.labels(kind.value).inc(result.stored)
    m.objects_duplicate.labels(kind.value).inc(result.duplicates)
    return result
