"""The binary record streams used to upload and fetch many chunks or pages in one HTTP
request (docs/FORMAT.md, "Object batches"). Two versions, told apart by media type:

    v2 (application/x-cdp-records-v2):
        record = id (32) || crc32(blob) (4) || length (u32, big-endian) || blob (length)
    v1 (application/x-cdp-records):
        record = id (32) || sha256(blob) (32) || length (u32, big-endian) || blob (length)

The checksum lets the server reject a blob damaged in transit or by a broken client
without holding the key, and is what it stores to verify the blob at rest later. It only
has to catch accidents: a chunk is authenticated by AES-GCM and its keyed ID when opened,
a page by its SHA-256 ID, so a client reading fetched objects need not recompute it. That
is why v2 uses CRC-32 (zlib's, IEEE 802.3), about three times SHA-256's speed here, where
v1 hashed every blob twice (agent and server) with SHA-256.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from . import format as fmt
from .errors import FormatError, IntegrityError


def _crc32(blob: bytes | memoryview) -> bytes:
    return zlib.crc32(blob).to_bytes(4, "big")


def _sha256(blob: bytes | memoryview) -> bytes:
    return hashlib.sha256(blob).digest()


@dataclass(frozen=True)
class RecordFormat:
    version: int
    media_type: str
    checksum: Callable[[bytes | memoryview], bytes]
    checksum_size: int
    #: id, checksum, blob length
    header: struct.Struct = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "header", struct.Struct(f">32s{self.checksum_size}sI"))


V1 = RecordFormat(1, "application/x-cdp-records", _sha256, 32)
V2 = RecordFormat(2, "application/x-cdp-records-v2", _crc32, 4)
#: What agents send and ask for; servers accept both.
CURRENT = V2
BY_MEDIA_TYPE = {f.media_type: f for f in (V1, V2)}
#: A stored checksum names its algorithm by its length.
_BY_CHECKSUM_SIZE = {f.checksum_size: f for f in (V1, V2)}
#: The larger header of the two: split_records cuts requests that keep their byte limit in
#: either version.
RECORD_HEADER_SIZE = max(f.header.size for f in (V1, V2))  # 68
#: Largest blob a record may carry: a maximal block, uncompressible, plus blob overhead.
MAX_RECORD_BLOB = fmt.MAX_BLOCK_SIZE + fmt.BLOB_OVERHEAD


def checksum_matches(blob: bytes | memoryview, checksum: bytes) -> bool:
    """Whether `blob` has `checksum`, of the record version it came in (its length says
    which): the server checks blobs at rest against what their upload carried."""
    form = _BY_CHECKSUM_SIZE.get(len(checksum))
    return form is not None and form.checksum(blob) == checksum


def split_records(items: list[tuple[bytes, bytes]], max_bytes: int, max_count: int,
                  ) -> Iterator[list[tuple[bytes, bytes]]]:
    """(id, blob) items cut, in order, into requests whose record stream holds at most
    `max_bytes` and `max_count` records (an item larger than `max_bytes` goes alone)."""
    batch: list[tuple[bytes, bytes]] = []
    size = 0
    for oid, blob in items:
        need = RECORD_HEADER_SIZE + len(blob)
        if batch and (size + need > max_bytes or len(batch) >= max_count):
            yield batch
            batch, size = [], 0
        batch.append((oid, blob))
        size += need
    if batch:
        yield batch


def encode_record(object_id: bytes, blob: bytes, form: RecordFormat = CURRENT) -> bytes:
    return encode_records([(object_id, blob)], form)


def encode_records(items: Iterable[tuple[bytes, bytes]], form: RecordFormat = CURRENT
                   ) -> bytes:
    return _join(((oid, blob, None) for oid, blob in items), form)


def encode_checked_records(items: Iterable[tuple[bytes, bytes, bytes]],
                           form: RecordFormat = CURRENT) -> bytes:
    """Records of (id, blob, the checksum the blob was just checked against): reused when
    it is of `form`'s algorithm, so the server serving stored objects does not compute it
    twice, and computed when the object was uploaded in the other version."""
    return _join(items, form)


def _join(items: Iterable[tuple[bytes, bytes, bytes | None]], form: RecordFormat) -> bytes:
    """Headers and blobs joined in one copy: a record made first (header + blob) would be
    a second copy of every blob, and those short-lived 8 KiB allocations made encoding an
    8 MiB batch take 15 ms here against about 6 ms, mostly in page faults."""
    parts: list[bytes] = []
    pack, compute, size = form.header.pack, form.checksum, form.checksum_size
    for oid, blob, checksum in items:
        if checksum is None or len(checksum) != size:
            checksum = compute(blob)
        parts += (pack(oid, checksum, len(blob)), blob)
    return b"".join(parts)


def decode_records(data: bytes | memoryview, form: RecordFormat = CURRENT, *,
                   max_count: int = 1 << 20, verify: bool = True,
                   ) -> Iterator[tuple[bytes, bytes, bytes]]:
    """Yield (id, checksum, blob), checking each blob against its checksum unless
    `verify` is false (the reader authenticates every blob itself). Raises FormatError on
    truncation or absurd lengths, IntegrityError on a checksum mismatch."""
    for object_id, checksum, blob in decode_record_views(data, form, max_count=max_count,
                                                         verify=verify):
        yield object_id, checksum, bytes(blob)


def decode_record_views(data: bytes | memoryview, form: RecordFormat = CURRENT, *,
                        max_count: int = 1 << 20, verify: bool = True,
                        ) -> Iterator[tuple[bytes, bytes, memoryview]]:
    """decode_records, each blob a view into `data` (valid while `data` is): the server
    writes uploaded blobs into a pack without a copy of each."""
    view = memoryview(data).cast("B")
    unpack, header_size, compute = form.header.unpack_from, form.header.size, form.checksum
    offset = count = 0
    while offset < len(view):
        if len(view) - offset < header_size:
            raise FormatError(f"record stream truncated in a header at byte {offset}")
        object_id, checksum, length = unpack(view, offset)
        offset += header_size
        if length > MAX_RECORD_BLOB:
            raise FormatError(f"record {object_id.hex()[:16]}… claims {length} bytes, more "
                              f"than the {MAX_RECORD_BLOB}-byte maximum")
        if len(view) - offset < length:
            raise FormatError(f"record {object_id.hex()[:16]}… truncated: {length} bytes "
                              f"announced, {len(view) - offset} present")
        blob = view[offset:offset + length]
        offset += length
        if verify and compute(blob) != checksum:
            raise IntegrityError(f"record {object_id.hex()[:16]}… does not match its checksum")
        count += 1
        if count > max_count:
            raise FormatError(f"record stream has more than {max_count} records")
        yield object_id, checksum, blob
