"""Real recovery points made with cdpcore alone (seal_block, index.build, Manifest.seal,
upload, commit) and read back through the API, byte for byte: the yardstick every
fault test measures the product with."""

from __future__ import annotations

import base64
import random
import time
from dataclasses import dataclass, field

from cdpcore import format as fmt
from cdpcore import index
from cdpcore.api import CommitRequest, ObjectKind, PointInfo, VolumeWire
from cdpcore.client import CdpClient
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import new_master_key
from cdpcore.layout import Layout
from cdpcore.manifest import Manifest, VolumeRecord, new_point_id

BS = 4096


def new_codec() -> BlobCodec:
    return BlobCodec(KeySet.from_master(new_master_key()))


def random_volume(rng: random.Random, blocks: int, zero_share: float = 0.2) -> bytes:
    """`blocks` blocks of random bytes, some all-zero (never stored), some repeated
    (deduplicated): the shapes a real disk has."""
    out = bytearray()
    for _ in range(blocks):
        roll = rng.random()
        if roll < zero_share:
            out += bytes(BS)
        elif roll < zero_share + 0.1 and out:
            start = rng.randrange(0, len(out) // BS) * BS
            out += out[start:start + BS]
        else:
            out += rng.randbytes(BS)
    return bytes(out)


@dataclass
class Point:
    host: str
    request: CommitRequest
    volumes: dict[str, bytes]
    chunks: dict[bytes, bytes] = field(default_factory=dict)
    pages: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def point_id(self) -> str:
        return self.request.point_id


def build(codec: BlobCodec, host: str, volumes: dict[str, bytes],
          created: float | None = None) -> Point:
    sink = index.MemoryPages()
    point = Point(host=host, request=None, volumes=volumes)  # type: ignore[arg-type]
    recs = []
    for name, data in volumes.items():
        geo = index.Geometry(size=len(data), block_size=BS)
        ids = []
        for b in range(geo.blocks):
            cid, blob = codec.seal_block(data[b * BS:(b + 1) * BS])
            ids.append(cid)
            if blob is not None:
                point.chunks[cid] = blob
        root = index.build(geo, ids, sink)
        recs.append(VolumeRecord(name=name, size=len(data), block_size=BS, root=root.hex(),
                                 height=geo.height))
    pid = new_point_id()
    when = time.time() if created is None else created
    manifest = Manifest(host=host, point_id=pid, created=when, volumes=recs,
                        layout=Layout(hostname=host))
    point.pages = dict(sink.pages)
    point.request = CommitRequest(
        point_id=pid, created=when,
        volumes=[VolumeWire(name=r.name, size=r.size, block_size=r.block_size, root=r.root,
                            height=r.height) for r in recs],
        manifest=base64.b64encode(manifest.seal(codec)).decode())
    return point


def push(client: CdpClient, point: Point) -> PointInfo:
    """Upload only what the server lacks (as the agent does), then commit."""
    for kind, objects in ((ObjectKind.chunks, point.chunks), (ObjectKind.pages, point.pages)):
        lacking = client.missing(point.host, kind, list(objects))
        if lacking:
            client.upload(point.host, kind, [(i, objects[i]) for i in lacking])
    return client.commit(point.host, point.request)


def read_back(client: CdpClient, codec: BlobCodec, host: str,
              point_id: str) -> dict[str, bytes]:
    """Every volume of a point as a restore reads it: pages checked by ID, chunks
    authenticated and re-hashed by open_block."""
    detail = client.point(host, point_id)
    manifest = Manifest.open(codec, host, point_id, base64.b64decode(detail.manifest),
                             [VolumeRecord.from_json(v.model_dump()) for v in detail.volumes])
    out = {}
    for vol in manifest.volumes:
        geo = vol.geometry
        ids = [cid for _, cid in index.iter_block_ids(geo, client.page_source(host),
                                                       vol.root_id)]
        wanted = sorted({c for c in ids if c != fmt.ZERO_ID})
        blobs = client.fetch(host, ObjectKind.chunks, wanted) if wanted else {}
        data = bytearray()
        for b, cid in enumerate(ids):
            data += (codec.open_block(cid, blobs[cid]) if cid != fmt.ZERO_ID
                     else bytes(geo.block_length(b)))
        out[vol.name] = bytes(data)
    return out
