"""Making real recovery points of image files with cdpcore alone (seal_block, index.build,
Manifest.seal, upload + commit), the layout captured by hotcopy.capture."""

from __future__ import annotations

import base64
import time
from typing import Any, Protocol

from cdpcore import format as fmt
from cdpcore.api import CommitRequest, ObjectKind, VolumeWire
from cdpcore.crypto import BlobCodec, ChunkIds
from cdpcore.index import Geometry, MemoryPages, build
from cdpcore.manifest import Manifest, VolumeRecord, new_point_id
from hotcopy.capture import capture


class Sink(Protocol):
    def upload(self, host: str, kind: ObjectKind, items: list[tuple[bytes, bytes]]) -> Any: ...

    def commit(self, host: str, req: CommitRequest) -> Any: ...


def make_point(sink: Sink, host: str, codec: BlobCodec, paths: list[str],
               block_size: int = 16384, created: float | None = None,
               version: int = fmt.MANIFEST_VERSION) -> Any:
    """`version`: the format version to write (1: HMAC-SHA256 chunk IDs, as points written
    before format version 2 are)."""
    if version == 1:
        codec = codec.with_chunk_ids(ChunkIds.HMAC_SHA256)
    layout, specs = capture(paths, host)
    records: list[VolumeRecord] = []
    for spec in specs:
        geo = Geometry(size=spec.size, block_size=block_size)
        ids: list[bytes] = []
        chunks: dict[bytes, bytes] = {}
        with open(spec.path, "rb") as f:
            for i in range(geo.blocks):
                f.seek(spec.offset + i * block_size)
                data = f.read(geo.block_length(i))
                cid, blob = codec.seal_block(data)
                ids.append(cid)
                if blob is not None:
                    chunks[cid] = blob
        if chunks:
            sink.upload(host, ObjectKind.chunks, list(chunks.items()))
        pages = MemoryPages()
        root = build(geo, ids, pages)
        if pages.pages:
            sink.upload(host, ObjectKind.pages, list(pages.pages.items()))
        records.append(VolumeRecord(spec.name, spec.size, block_size, root.hex(), geo.height))
    point_id = new_point_id()
    when = time.time() if created is None else created
    manifest = Manifest(host=host, point_id=point_id, created=when, volumes=records,
                        layout=layout, version=version)
    req = CommitRequest(point_id=point_id, created=when,
                        volumes=[VolumeWire(name=r.name, size=r.size, block_size=r.block_size,
                                            root=r.root, height=r.height) for r in records],
                        manifest=base64.b64encode(manifest.seal(codec)).decode())
    return sink.commit(host, req)
