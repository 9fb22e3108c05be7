"""Real recovery points for server tests, made with cdpcore: sealed chunks, index trees
built by cdpcore.index and a sealed manifest."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cdp_server.commit import commit
from cdp_server.datastore import Datastore
from cdpcore import index, records
from cdpcore.api import CommitRequest, ObjectKind, PointInfo, PointStats, VolumeWire
from cdpcore.client import CdpClient
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import new_master_key
from cdpcore.layout import Layout
from cdpcore.manifest import Manifest, VolumeRecord, new_point_id

from .stored import age_everything, object_location

BS = 4096


def new_codec() -> BlobCodec:
    return BlobCodec(KeySet.from_master(new_master_key()))


@dataclass
class Built:
    request: CommitRequest
    chunks: dict[bytes, bytes] = field(default_factory=dict)
    pages: dict[bytes, bytes] = field(default_factory=dict)
    #: per volume: the chunk ID of each block, in order
    block_ids: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def point_id(self) -> str:
        return self.request.point_id


def build_point(codec: BlobCodec, host: str, volumes: dict[str, bytes], *,
                block_size: int = BS, created: float | None = None,
                point_id: str | None = None, parent: str | None = None) -> Built:
    pages = index.MemoryPages()
    built = Built(request=None)  # type: ignore[arg-type]
    records = []
    for name, data in volumes.items():
        geometry = index.Geometry(size=len(data), block_size=block_size)
        ids = []
        for b in range(geometry.blocks):
            cid, blob = codec.seal_block(data[b * block_size:(b + 1) * block_size])
            ids.append(cid)
            if blob is not None:
                built.chunks[cid] = blob
        root = index.build(geometry, ids, pages)
        built.block_ids[name] = ids
        records.append(VolumeRecord(name=name, size=len(data), block_size=block_size,
                                    root=root.hex(), height=geometry.height))
    pid = point_id or new_point_id()
    created = time.time() if created is None else created
    manifest = Manifest(host=host, point_id=pid, created=created, volumes=records,
                        layout=Layout(hostname=host))
    built.pages = dict(pages.pages)
    built.request = CommitRequest(
        point_id=pid, created=created, parent=parent,
        volumes=[VolumeWire(name=r.name, size=r.size, block_size=r.block_size, root=r.root,
                            height=r.height) for r in records],
        manifest=base64.b64encode(manifest.seal(codec)).decode(),
        stats=PointStats(new_chunks=len(built.chunks)))
    return built


def upload_direct(ds: Datastore, host: str, built: Built) -> None:
    """A point's chunks and pages uploaded straight into a datastore (no HTTP)."""
    ds.upload(host, ObjectKind.chunks, records.encode_records(list(built.chunks.items())))
    ds.upload(host, ObjectKind.pages, records.encode_records(list(built.pages.items())))


def commit_direct(ds: Datastore, host: str, built: Built) -> PointInfo:
    """A point uploaded and committed straight into a datastore (no HTTP)."""
    upload_direct(ds, host, built)
    return commit(ds, host, built.request)[0]


def stored_point(data_dir: Path, blocks: int = 8) -> tuple[Datastore, Built]:
    """A new datastore at `data_dir` holding one point of host web1: `blocks` random
    blocks of one volume."""
    ds, _ = Datastore.init(data_dir)
    ds.add_host("web1")
    built = build_point(new_codec(), "web1", {"vda": os.urandom(blocks * BS)})
    commit_direct(ds, "web1", built)
    return ds, built


def half_dead_pack(data_dir: Path) -> tuple[Datastore, Built, Built]:
    """A datastore whose first point (10 blocks) is deleted while the second shares 3 of
    its blocks, everything last seen two hours ago: gc rewrites the first's chunk pack
    (3 of its 10 chunks live) and drops its page pack."""
    ds, _ = Datastore.init(data_dir)
    ds.add_host("web1")
    codec = new_codec()
    data = os.urandom(10 * BS)
    first = build_point(codec, "web1", {"vda": data})
    second = build_point(codec, "web1", {"vda": data[:3 * BS] + os.urandom(7 * BS)})
    for built in (first, second):
        commit_direct(ds, "web1", built)
    ds.catalog.delete_points("web1", [first.point_id])
    age_everything(data_dir, 7200)
    return ds, first, second


def upload_all(client: CdpClient, host: str, built: Built) -> None:
    client.upload(host, ObjectKind.chunks, list(built.chunks.items()))
    client.upload(host, ObjectKind.pages, list(built.pages.items()))


def push(client: CdpClient, host: str, built: Built) -> PointInfo:
    upload_all(client, host, built)
    return client.commit(host, built.request)


def restore(client: CdpClient, codec: BlobCodec, host: str, point_id: str) -> dict[str, bytes]:
    """Read a point back through the API the way a restore does: byte for byte."""
    detail = client.point(host, point_id)
    out = {}
    for vol in detail.volumes:
        geometry = index.Geometry(size=vol.size, block_size=vol.block_size)
        ids = [cid for _, cid in index.iter_block_ids(geometry, client.page_source(host),
                                                       bytes.fromhex(vol.root))]
        wanted = [c for c in set(ids) if any(c)]
        blobs = client.fetch(host, ObjectKind.chunks, wanted) if wanted else {}
        data = bytearray()
        for b, cid in enumerate(ids):
            if any(cid):
                data += codec.open_block(cid, blobs[cid])
            else:
                data += bytes(geometry.block_length(b))
        out[vol.name] = bytes(data)
    return out


def flip_stored_byte(data_dir: Path, kind: str, object_id: bytes, at: int = 40) -> None:
    """Flip one byte of a stored object in its pack file; the catalog still trusts it."""
    pack, offset, _ = object_location(data_dir, kind, object_id)
    with open(pack, "r+b") as f:
        f.seek(offset + at)
        byte = f.read(1)
        f.seek(offset + at)
        f.write(bytes([byte[0] ^ 0x01]))
