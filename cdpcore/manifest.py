"""Recovery points: the volume records the server sees, and the sealed manifest only the
key holder can read (docs/FORMAT.md, "Recovery points")."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from . import format as fmt
from .crypto import BlobCodec, ChunkIds
from .errors import FormatError, IntegrityError, shown
from .index import Geometry
from .layout import Layout

#: The manifest versions this program reads, and the chunk-ID scheme of each
#: (docs/FORMAT.md, "Blocks and chunks").
CHUNK_IDS_OF_VERSION = {1: ChunkIds.HMAC_SHA256, 2: ChunkIds.BLAKE3}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+/-]{0,127}$")
_POINT_ID = re.compile(r"^[0-9a-f]{32}$")


def check_name(kind: str, name: str) -> str:
    """Host and volume names: short, printable, no path tricks (no '..', no leading '/')."""
    if not _NAME.fullmatch(name) or ".." in name:  # match's $ passes a final newline
        raise FormatError(f"invalid {kind} name {shown(name)}: use letters, digits and ._:+/- "
                          "(at most 128, no '..')")
    return name


def new_point_id() -> str:
    return uuid.uuid4().hex


def check_point_id(point_id: str) -> str:
    if not _POINT_ID.fullmatch(point_id):  # match's $ passes a final newline
        raise FormatError(f"invalid point ID {shown(point_id)}: 32 lower-case hex digits "
                          "expected")
    return point_id


@dataclass(frozen=True)
class VolumeRecord:
    """One protected volume in a point: its size and the root of its block index."""

    name: str
    size: int
    block_size: int
    root: str  # hex page ID (64 zeros: an all-zero volume)
    height: int

    def __post_init__(self) -> None:
        check_name("volume", self.name)
        if self.height != self.geometry.height:
            raise FormatError(f"volume {self.name}: height {self.height} does not match "
                              f"its size ({self.geometry.height} expected)")
        if len(self.root) != 2 * fmt.ID_SIZE or self.root.strip("0123456789abcdef"):
            raise FormatError(f"volume {self.name}: root is not a 64-digit hex ID")

    @property
    def geometry(self) -> Geometry:
        return Geometry(size=self.size, block_size=self.block_size)

    @property
    def root_id(self) -> bytes:
        return bytes.fromhex(self.root)

    @classmethod
    def from_json(cls, doc: Any) -> VolumeRecord:
        try:
            name, root = doc["name"], doc["root"]
            # Taken as they are, not as str(anything): str() of a deeply nested list
            # raised RecursionError, of a long one made a name of megabytes.
            if not isinstance(name, str) or not isinstance(root, str):
                raise FormatError(f"malformed volume record: name {shown(name)} and root "
                                  f"{shown(root)} must be strings")
            return cls(name=name, size=int(doc["size"]), block_size=int(doc["block_size"]),
                       root=root, height=int(doc["height"]))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise FormatError(f"malformed volume record: {exc!r}") from None


@dataclass
class Manifest:
    """Everything about a point; sealed with the repository key before it leaves the host."""

    host: str
    point_id: str
    created: float  # Unix time at which the snapshot was taken
    volumes: list[VolumeRecord]
    layout: Layout
    tracking: dict[str, Any] = field(default_factory=dict)  # mode, generation, full_scan
    parent: str | None = None
    version: int = fmt.MANIFEST_VERSION

    @property
    def chunk_ids(self) -> ChunkIds:
        """How this point's chunk IDs were computed: open its chunks with
        `codec.with_chunk_ids(manifest.chunk_ids)`."""
        try:
            return CHUNK_IDS_OF_VERSION[self.version]
        except KeyError:
            raise FormatError(f"manifest version {self.version} names no chunk-ID "
                              "scheme") from None

    def aad(self) -> bytes:
        return manifest_aad(self.host, self.point_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "host": self.host, "point_id": self.point_id,
            "created": self.created, "parent": self.parent, "tracking": self.tracking,
            "volumes": [asdict(v) for v in self.volumes], "layout": self.layout.to_json(),
        }

    def seal(self, codec: BlobCodec) -> bytes:
        """Sealed with the codec that named the point's chunks: its scheme must be the one
        this manifest's version declares."""
        if codec.keys.chunk_ids is not self.chunk_ids:
            raise ValueError(f"a version {self.version} manifest declares {self.chunk_ids.value} "
                             f"chunk IDs, but the codec makes {codec.keys.chunk_ids.value} IDs")
        body = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return codec.seal(fmt.BLOB_KIND_MANIFEST, self.aad(), body)

    @classmethod
    def open(cls, codec: BlobCodec, host: str, point_id: str, blob: bytes,
             volumes: list[VolumeRecord] | None = None) -> Manifest:
        """Decrypt a point's manifest. With `volumes` (what the server listed), check that
        the server's records are exactly the sealed ones: a server cannot swap roots."""
        body = codec.open(fmt.BLOB_KIND_MANIFEST, manifest_aad(host, point_id), blob)
        try:
            doc = json.loads(body)
            version = doc["version"]
            if type(version) is not int or version not in CHUNK_IDS_OF_VERSION:
                raise FormatError(f"manifest version {version} is not supported (this "
                                  f"program reads versions {sorted(CHUNK_IDS_OF_VERSION)})")
            manifest = cls(
                host=str(doc["host"]), point_id=str(doc["point_id"]),
                created=float(doc["created"]), parent=doc.get("parent"),
                tracking=dict(doc.get("tracking") or {}),
                volumes=[VolumeRecord.from_json(v) for v in doc["volumes"]],
                layout=Layout.from_json(doc["layout"]), version=version,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise FormatError(f"malformed manifest: {exc!r}") from None
        except RecursionError:  # json's parser recurses once per nesting level
            raise FormatError("malformed manifest: nested too deeply") from None
        if manifest.host != host or manifest.point_id != point_id:
            raise IntegrityError("manifest belongs to another host or point")
        if volumes is not None and sorted(volumes, key=lambda v: v.name) != sorted(
                manifest.volumes, key=lambda v: v.name):
            raise IntegrityError(f"server's volume records for point {point_id} differ from "
                                 "the sealed manifest")
        return manifest


def manifest_aad(host: str, point_id: str) -> bytes:
    return f"cdp-manifest/{host}/{point_id}".encode()
