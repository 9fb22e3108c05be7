"""Reading points back: `verify_point` fetches, decrypts and checks every chunk of a
point; `iter_volume` yields a volume's bytes (what a restore writes), for checks and tests."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field

from cdpcore import format as fmt
from cdpcore.api import MAX_IDS_PER_REQUEST, ObjectKind
from cdpcore.crypto import BlobCodec
from cdpcore.errors import CdpError, FormatError, IntegrityError, NotFoundError
from cdpcore.index import iter_block_ids
from cdpcore.manifest import Manifest, VolumeRecord

from .remote import Remote

#: Chunk IDs `verify_point` remembers as checked (about 57 MiB).
MAX_SEEN = 1 << 19


@dataclass
class VerifyResult:
    point_id: str
    volumes: int = 0
    blocks: int = 0
    chunks_checked: int = 0
    bytes_checked: int = 0
    missing: list[str] = field(default_factory=list)  # hex chunk IDs
    damaged: list[str] = field(default_factory=list)
    #: volumes whose index could not be read to its end: what was not checked, and why
    unreadable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.damaged and not self.unreadable


def open_point(remote: Remote, host: str, codec: BlobCodec, point_id: str) -> Manifest:
    detail = remote.point(host, point_id)
    volumes = [VolumeRecord(name=v.name, size=v.size, block_size=v.block_size, root=v.root,
                            height=v.height) for v in detail.volumes]
    return Manifest.open(codec, host, point_id, base64.b64decode(detail.manifest), volumes)


def verify_point(remote: Remote, host: str, codec: BlobCodec, point_id: str) -> VerifyResult:
    manifest = open_point(remote, host, codec, point_id)
    codec = codec.with_chunk_ids(manifest.chunk_ids)  # an older point may use HMAC IDs
    result = VerifyResult(point_id=point_id, volumes=len(manifest.volumes))
    pages = remote.page_source(host)
    seen: set[bytes] = set()
    batch: list[bytes] = []
    marked: set[bytes] | None = None  # chunks the server has marked damaged, asked once

    def fetch_each(ids: list[bytes]) -> dict[bytes, bytes]:
        """One chunk per request, to tell which chunks of a failed batch are at fault."""
        nonlocal marked
        got: dict[bytes, bytes] = {}
        for cid in ids:
            try:
                got.update(remote.fetch(host, ObjectKind.chunks, [cid]))
            except NotFoundError:
                # The server refuses a chunk it has marked damaged as it refuses a lost
                # one (404); its list of damaged chunks tells them apart.
                if marked is None:
                    marked = set(remote.damaged(host))
                (result.damaged if cid in marked else result.missing).append(cid.hex())
            except IntegrityError as exc:
                (result.missing if "did not send" in str(exc) else result.damaged).append(cid.hex())
        return got

    def check(ids: list[bytes]) -> None:
        try:
            got = remote.fetch(host, ObjectKind.chunks, ids)
        except (NotFoundError, IntegrityError):
            got = fetch_each(ids)
        for cid in ids:
            if cid not in got:
                continue
            try:
                data = codec.open_block(cid, got[cid])
            except CdpError:
                result.damaged.append(cid.hex())
                continue
            result.chunks_checked += 1
            result.bytes_checked += len(data)

    for vol in manifest.volumes:
        unread = 0  # the first block the index has not given yet
        try:
            for block, cid in iter_block_ids(vol.geometry, pages, vol.root_id):
                unread = block + 1
                result.blocks += 1
                # A chunk seen is not checked again; the set is emptied when full (about
                # 110 bytes a chunk), so a chunk may be checked twice but memory stays
                # bounded.
                if cid == fmt.ZERO_ID or cid in seen:
                    continue
                if len(seen) >= MAX_SEEN:
                    seen.clear()
                seen.add(cid)
                batch.append(cid)
                if len(batch) >= min(MAX_IDS_PER_REQUEST, 512):
                    check(batch)
                    batch = []
        except (NotFoundError, IntegrityError, FormatError) as exc:
            # An index page lost or damaged: the blocks under it are unknown, the other
            # volumes are still checked.
            result.unreadable.append(
                f"volume {vol.name}: blocks from {unread} (byte "
                f"{unread * vol.geometry.block_size}) not checked: {exc}")
    if batch:
        check(batch)
    return result


def iter_volume(remote: Remote, host: str, codec: BlobCodec, vol: VolumeRecord,
                ) -> Iterator[bytes]:
    """Yield the volume's bytes block by block, every chunk authenticated (`codec` in the
    point's chunk-ID scheme: Manifest.chunk_ids)."""
    geometry = vol.geometry
    pending: list[tuple[int, bytes]] = []

    def flush() -> Iterator[bytes]:
        wanted = sorted({c for _, c in pending if c != fmt.ZERO_ID})
        got = remote.fetch(host, ObjectKind.chunks, wanted) if wanted else {}
        for index, cid in pending:
            if cid == fmt.ZERO_ID:
                yield bytes(geometry.block_length(index))
            else:
                yield codec.open_block(cid, got[cid])

    for index, cid in iter_block_ids(geometry, remote.page_source(host), vol.root_id):
        pending.append((index, cid))
        if len(pending) >= 256:
            yield from flush()
            pending = []
    yield from flush()
