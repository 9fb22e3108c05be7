"""Chunk IDs and sealed blobs (docs/FORMAT.md, "Chunks" and "Sealed blobs").

A block's ID is keyed BLAKE3 of its plaintext (HMAC-SHA256 in points of manifest
version 1): the server learns nothing from IDs and cannot confirm guesses about content.
A blob is the block compressed with zstd (when that helps) and encrypted with
AES-256-GCM; the authenticated data binds the header and the object's ID, so a blob
cannot be swapped for another, truncated or edited unnoticed.
"""

from __future__ import annotations

import enum
import functools
import hmac
import os
import struct
import threading
from dataclasses import dataclass, field, replace

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import format as fmt
from .errors import FormatError, IntegrityError

_HEADER = struct.Struct(">4sBBBB12s")
assert _HEADER.size == fmt.BLOB_HEADER_SIZE


class ChunkIds(enum.Enum):
    """How a block's chunk ID is computed from its plaintext; a point's manifest version
    says which (Manifest.chunk_ids)."""

    HMAC_SHA256 = "hmac-sha256"  # manifest version 1
    BLAKE3 = "blake3"  # manifest version 2: keyed BLAKE3, three times HMAC-SHA256's speed


#: BLAKE3 key derivation context of the chunk-ID key (docs/FORMAT.md, "Keys"): the ID key
#: is never used raw by two algorithms.
_BLAKE3_ID_CONTEXT = "cdp-appliance 2026-12 chunk id v2"


@dataclass(frozen=True)
class KeySet:
    """The two secrets of a repository, derived from its 64-byte master key, and the
    chunk-ID scheme in use (writers use the newest; readers that of the point they read)."""

    enc_key: bytes
    id_key: bytes
    chunk_ids: ChunkIds = ChunkIds.BLAKE3
    _blake3_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_blake3_key", blake3.blake3(
            self.id_key, derive_key_context=_BLAKE3_ID_CONTEXT).digest())

    @classmethod
    def from_master(cls, master: bytes) -> KeySet:
        if len(master) != fmt.MASTER_KEY_SIZE:
            raise FormatError(f"master key must be {fmt.MASTER_KEY_SIZE} bytes, got {len(master)}")
        return cls(enc_key=master[:32], id_key=master[32:])

    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        """Keyed ID of a block's plaintext, in this key set's scheme."""
        if self.chunk_ids is ChunkIds.BLAKE3:
            return blake3.blake3(plaintext, key=self._blake3_key).digest()
        return hmac.digest(self.id_key, plaintext, "sha256")


class _ZstdContexts(threading.local):
    """One compressor and one decompressor per thread: zstandard's context objects must
    not be shared between threads, and making one per block costs more than compressing
    a 16 KiB block (bench/pipeline.py)."""

    def __init__(self, level: int) -> None:
        self.compressor = zstandard.ZstdCompressor(level=level) if level else None
        self.decompressor = zstandard.ZstdDecompressor()


class BlobCodec:
    """Seals and opens blobs with one key set. Thread-safe (per-thread zstd contexts), and
    every primitive used releases the GIL."""

    def __init__(self, keys: KeySet, level: int = fmt.ZSTD_LEVEL) -> None:
        """`level`: the zstd level blobs are sealed with, 0 for none (stored as they are);
        blobs of any level open alike."""
        if level and not fmt.MIN_ZSTD_LEVEL <= level <= fmt.MAX_ZSTD_LEVEL:
            raise ValueError(f"compression level must be 0 (none) or {fmt.MIN_ZSTD_LEVEL} "
                             f"to {fmt.MAX_ZSTD_LEVEL}, not {level}")
        self.keys = keys
        self._level = level
        self._aead = AESGCM(keys.enc_key)
        self._zstd = _ZstdContexts(level)

    def with_chunk_ids(self, scheme: ChunkIds) -> BlobCodec:
        """This codec for chunks named in `scheme` (a reader opening an older point)."""
        if scheme is self.keys.chunk_ids:
            return self
        return BlobCodec(replace(self.keys, chunk_ids=scheme), self._level)

    def seal(self, kind: int, object_id: bytes, plaintext: bytes | memoryview) -> bytes:
        """Compress (when it saves space) and encrypt; `object_id` becomes part of the AAD."""
        compressor = self._zstd.compressor
        compressed = compressor.compress(plaintext) if compressor else plaintext
        if len(compressed) < len(plaintext):
            compression, body = fmt.COMPRESSION_ZSTD, compressed
        else:
            compression, body = fmt.COMPRESSION_NONE, bytes(plaintext)
        header = _HEADER.pack(fmt.BLOB_MAGIC, fmt.HEADER_VERSION, kind, compression, 0,
                              os.urandom(fmt.NONCE_SIZE))
        return header + self._aead.encrypt(header[-fmt.NONCE_SIZE:], body, header + object_id)

    def open(self, kind: int, object_id: bytes, blob: bytes | memoryview) -> bytes:
        """Authenticate, decrypt and decompress. Raises FormatError or IntegrityError."""
        if len(blob) < fmt.BLOB_OVERHEAD:
            raise FormatError(f"blob truncated: {len(blob)} bytes, less than the "
                              f"{fmt.BLOB_OVERHEAD}-byte minimum")
        header = bytes(blob[: fmt.BLOB_HEADER_SIZE])
        magic, version, blob_kind, compression, reserved, nonce = _HEADER.unpack(header)
        if magic != fmt.BLOB_MAGIC:
            raise FormatError(f"not a sealed blob (magic {magic!r})")
        if version != fmt.HEADER_VERSION:
            raise FormatError(f"blob format version {version} is not supported "
                              f"(this program reads version {fmt.HEADER_VERSION})")
        if blob_kind != kind:
            raise IntegrityError(f"blob kind {blob_kind} where kind {kind} was expected")
        if compression not in (fmt.COMPRESSION_NONE, fmt.COMPRESSION_ZSTD) or reserved:
            raise FormatError(f"blob header has invalid compression {compression} "
                              f"or reserved byte {reserved}")
        try:
            body = self._aead.decrypt(nonce, bytes(blob[fmt.BLOB_HEADER_SIZE:]), header + object_id)
        except InvalidTag:
            raise IntegrityError(
                f"{_blob_name(kind, object_id)} failed authentication: tampered, corrupted, "
                "truncated, stored under another ID, or sealed with another key") from None
        if compression == fmt.COMPRESSION_NONE:
            return body
        limit = fmt.MAX_PLAINTEXT_SIZE if kind == fmt.BLOB_KIND_CHUNK else fmt.MAX_MANIFEST_SIZE
        try:
            # zstandard honours max_output_size only for frames that do not state their
            # size; one that does gets a buffer of the size it states (a zip bomb, or a
            # MemoryError for a forged header), so that size is checked first.
            stated = zstandard.frame_content_size(body)
            if stated > limit:
                raise FormatError(f"blob {object_id.hex()[:16]}… does not decompress: it "
                                  f"states {stated} bytes, more than the {limit}-byte "
                                  "maximum")
            return self._zstd.decompressor.decompress(body, max_output_size=limit)
        except zstandard.ZstdError as exc:
            # Authenticated but undecodable: written by a broken or hostile client.
            raise FormatError(f"blob {object_id.hex()[:16]}… does not decompress: {exc}") from None

    # --- blocks: the ID is derived from the content and re-checked on open

    def seal_block(self, plaintext: bytes | memoryview) -> tuple[bytes, bytes | None]:
        """Returns (chunk ID, blob); an all-zero block gives (ZERO_ID, None): never stored."""
        if is_zero(plaintext):
            return fmt.ZERO_ID, None
        chunk_id = self.keys.chunk_id(plaintext)
        return chunk_id, self.seal(fmt.BLOB_KIND_CHUNK, chunk_id, plaintext)

    def open_block(self, chunk_id: bytes, blob: bytes | memoryview) -> bytes:
        plaintext = self.open(fmt.BLOB_KIND_CHUNK, chunk_id, blob)
        if not hmac.compare_digest(self.keys.chunk_id(plaintext), chunk_id):
            raise IntegrityError(f"chunk {chunk_id.hex()[:16]}… decrypts to data with another ID")
        return plaintext


def _blob_name(kind: int, object_id: bytes) -> str:
    """How errors name a blob: a manifest by its point and host (its object ID is
    "cdp-manifest/<host>/<point>", cdpcore.manifest.manifest_aad), others by ID."""
    prefix = b"cdp-manifest/"
    if kind == fmt.BLOB_KIND_MANIFEST and object_id.startswith(prefix):
        host, _, point = object_id[len(prefix):].decode(errors="replace").rpartition("/")
        return f"the manifest of point {point} of host {host!r}"
    return f"blob {object_id.hex()[:16]}…"


_ZERO_PAGE = bytes(64 * 1024)


def is_zero(data: bytes | memoryview) -> bool:
    """True when every byte is zero. Compares bytes objects against a zero buffer (memcmp
    speed); a memoryview compared with bytes goes item by item, 40 times slower than
    copying the piece out first. A bytes object of up to 64 KiB (a block) is compared
    as it is, without a copy."""
    if isinstance(data, bytes) and len(data) <= len(_ZERO_PAGE):
        return data == _zeros(len(data))
    view = memoryview(data).cast("B")
    for start in range(0, len(view), len(_ZERO_PAGE)):
        part = view[start:start + len(_ZERO_PAGE)].tobytes()
        if part != _ZERO_PAGE[: len(part)]:
            return False
    return True


@functools.lru_cache(maxsize=16)
def _zeros(length: int) -> bytes:
    return bytes(length)
