"""The CDP server's HTTP API, declared once: paths, roles and the JSON wire types that the
server (FastAPI) validates and the client (cdpcore.client) sends and parses. docs/API.md
and the server's /openapi.json describe the same thing for people and tools.

Authentication: `Authorization: Bearer <token>`. Roles (docs/FORMAT.md, "Threat model"):
agent (add to its own host, never delete), restore (read its own host), admin (all).
Another host's data answers 404; a wrong role 403; a missing or bad token 401.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, TypeAdapter

API_PREFIX = "/api/v1"
#: Upper bound of one upload request body (records): keeps server memory bounded.
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
#: Upper bound of IDs per missing/fetch query.
MAX_IDS_PER_REQUEST = 4096
#: Upper bound of one fetch answer's stored bytes: a fetch of objects larger in all
#: answers 413, and the client asks again for halves (blocks may be up to 4 MiB each).
MAX_FETCH_BYTES = 64 * 1024 * 1024
#: Latest creation time a point may carry (9999-12-31T23:59:59Z): every time the server
#: files by (retention's UTC calendar buckets) must be a date the platform can represent.
MAX_POINT_TIME = 253402300799.0

HexId = str  # 64 lower-case hex digits


class Role(StrEnum):
    agent = "agent"
    restore = "restore"
    admin = "admin"


class ObjectKind(StrEnum):
    """The two object namespaces of a host: encrypted chunks and plain index pages."""

    chunks = "chunks"
    pages = "pages"


class Health(BaseModel):
    status: str
    version: str
    #: Record stream versions accepted in uploads (cdpcore.records); servers that predate
    #: the field accept only version 1.
    records: list[int] = [1]


class HostInfo(BaseModel):
    name: str
    points: int
    latest: float | None = None  # Unix time of the newest point
    has_key: bool = False
    #: Removed (`cdp-server host remove`): no tokens, no points; gc frees its objects, and
    #: enrolling the name again revives it. Servers from before removal omit it.
    retired: bool = False


class HostCreated(BaseModel):
    name: str
    tokens: dict[Role, str]  # shown once; stored hashed


class TokenRequest(BaseModel):
    role: Role


class TokenIssued(BaseModel):
    host: str | None  # None for an admin token
    role: Role
    token: str  # shown once; stored hashed
    revoked: int  # tokens of the same host and role that stopped working


class IdList(BaseModel):
    ids: list[HexId] = Field(max_length=MAX_IDS_PER_REQUEST)


class UploadResult(BaseModel):
    stored: int  # newly stored
    duplicates: int  # already present (not written again)
    #: Bytes of blobs the upload wrote to storage (None from servers before it was added):
    #: what an agent that uploaded without asking first learns of the duplicates it sent.
    stored_bytes: int | None = None


class VolumeWire(BaseModel):
    name: str
    size: int = Field(ge=0)
    block_size: int
    root: HexId
    height: int = Field(ge=0)


class PointStats(BaseModel):
    changed_bytes: int = 0  # bytes of blocks that differ from the parent point
    new_chunks: int = 0
    new_bytes: int = 0  # blob bytes uploaded for this point
    scanned_bytes: int = 0
    #: seconds; finite, as every float of a commit: JSON has no NaN or Infinity, so one
    #: would be stored as null and break every listing of the host for every client.
    duration: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class CommitRequest(BaseModel):
    point_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    created: float = Field(ge=0, le=MAX_POINT_TIME, allow_inf_nan=False)  # Unix time
    parent: str | None = None
    volumes: list[VolumeWire]
    manifest: str  # base64 of the sealed manifest blob
    stats: PointStats = PointStats()


class VerifyStatus(StrEnum):
    unverified = "unverified"
    ok = "ok"
    damaged = "damaged"


class PointInfo(BaseModel):
    point_id: str
    host: str
    created: float
    committed: float
    parent: str | None = None
    size: int  # sum of volume sizes
    stats: PointStats
    pinned: bool = False
    verify: VerifyStatus = VerifyStatus.unverified


#: A point listing's JSON (`GET /hosts/{host}/points`), parsed in one pass.
POINT_LIST = TypeAdapter(list[PointInfo])


class PointDetail(PointInfo):
    volumes: list[VolumeWire]
    manifest: str  # base64 sealed manifest


class MissingObjects(BaseModel):
    """Body of a 409 answer to a commit that references objects the server lacks."""

    detail: str
    missing_chunks: list[HexId] = []
    missing_pages: list[HexId] = []


class Retention(BaseModel):
    keep_last: int = Field(default=0, ge=0)
    keep_minutely: int = Field(default=0, ge=0)
    keep_hourly: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    keep_monthly: int = Field(default=0, ge=0)


class DamagedRange(BaseModel):
    point_id: str
    volume: str
    offset: int  # bytes
    length: int
    chunk: HexId


class VerifyReport(BaseModel):
    checked_chunks: int
    checked_pages: int
    damaged_chunks: list[HexId]
    missing_chunks: list[HexId]
    damaged_points: list[str]
    ranges: list[DamagedRange]


class PruneReport(BaseModel):
    kept: list[str]
    removed: list[str]


class SkippedHost(BaseModel):
    """A host gc collected nothing of, because it could not read an index page one of
    its points references (the page's children are unknown, so none may be swept)."""

    host: str
    reason: str  # which page of which point, and what is wrong with it


class GcReport(BaseModel):
    live_chunks: int
    removed_chunks: int
    removed_pages: int
    freed_bytes: int
    kept_in_grace: int
    #: Servers from before 2026-12 omit it (they skipped such hosts silently).
    skipped_hosts: list[SkippedHost] = Field(default_factory=list)
