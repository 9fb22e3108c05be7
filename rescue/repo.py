"""Opening a host's repository on the CDP server for restore: unwrap the key with the
passphrase (or a printable recovery key), list points, open a point's sealed manifest."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Protocol

from cdpcore.api import PointDetail, PointInfo
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.errors import FormatError, NotFoundError
from cdpcore.keys import WrappedKey, master_from_recovery_key
from cdpcore.manifest import Manifest, VolumeRecord
from cdpcore.points import select_point

from .stream import ChunkSource


class RestoreClient(ChunkSource, Protocol):
    """What the engine needs of cdpcore.client.CdpClient (a restore-role token suffices)."""

    def get_key(self, host: str) -> dict[str, Any] | None: ...

    def points(self, host: str) -> list[PointInfo]: ...

    def point(self, host: str, point_id: str) -> PointDetail: ...


@dataclass
class OpenPoint:
    info: PointDetail
    manifest: Manifest
    codec: BlobCodec  # opens this point's chunks (its manifest version's chunk-ID scheme)


class Repository:
    def __init__(self, client: RestoreClient, host: str, codec: BlobCodec) -> None:
        self.client, self.host, self.codec = client, host, codec

    @classmethod
    def open(cls, client: RestoreClient, host: str, passphrase: str) -> Repository:
        """`passphrase` is the key passphrase, or a recovery key (CDP1-...)."""
        try:
            doc = client.get_key(host)
        except NotFoundError:
            raise NotFoundError(f"unknown host {host!r}: the server has no such host, or "
                                "this token belongs to another host", 404) from None
        if passphrase.strip().upper().startswith("CDP1-"):
            master = master_from_recovery_key(passphrase, doc, unreadable_key_file_ok=True)
        else:
            if doc is None:
                raise NotFoundError(f"host {host!r} has no key on the server: open it with "
                                    "its printable recovery key (CDP1-...) instead")
            master = WrappedKey.from_json(doc).unwrap(passphrase)
        return cls(client, host, BlobCodec(KeySet.from_master(master)))

    def points(self) -> list[PointInfo]:
        return sorted(self.client.points(self.host), key=lambda p: (p.created, p.point_id))

    def choose(self, choice: str) -> PointInfo:
        return select_point(self.points(), choice, self.host)

    def open_point(self, point_id: str) -> OpenPoint:
        detail = self.client.point(self.host, point_id)
        try:
            blob = base64.b64decode(detail.manifest, validate=True)
        except ValueError:
            raise FormatError(f"point {point_id}: the server sent a manifest that is not "
                              "base64") from None
        volumes = [VolumeRecord.from_json(v.model_dump()) for v in detail.volumes]
        manifest = Manifest.open(self.codec, self.host, point_id, blob, volumes)
        return OpenPoint(detail, manifest, self.codec.with_chunk_ids(manifest.chunk_ids))
