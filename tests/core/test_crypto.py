"""Sealed blobs and chunk IDs: round trips, and every kind of damage detected."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdpcore import format as fmt
from cdpcore.crypto import BlobCodec, ChunkIds, KeySet, is_zero
from cdpcore.errors import FormatError, IntegrityError


@pytest.fixture(scope="module")
def codec() -> BlobCodec:
    return BlobCodec(KeySet.from_master(bytes(range(64))))


def test_block_round_trip_compressible_and_random(codec: BlobCodec) -> None:
    for plaintext in (b"hello world " * 2000, os.urandom(16384), b"\x01"):
        chunk_id, blob = codec.seal_block(plaintext)
        assert blob is not None
        assert codec.open_block(chunk_id, blob) == plaintext


def test_compressible_block_is_stored_compressed(codec: BlobCodec) -> None:
    _, blob = codec.seal_block(b"a" * 16384)
    assert blob is not None and len(blob) < 200
    assert blob[6] == fmt.COMPRESSION_ZSTD


def test_incompressible_block_is_stored_raw(codec: BlobCodec) -> None:
    _, blob = codec.seal_block(os.urandom(16384))
    assert blob is not None and len(blob) == 16384 + fmt.BLOB_OVERHEAD
    assert blob[6] == fmt.COMPRESSION_NONE


@pytest.mark.parametrize("level", [fmt.MIN_ZSTD_LEVEL, -1, 0, 3, fmt.MAX_ZSTD_LEVEL])
def test_blobs_of_every_level_open_with_any_codec_of_the_key(level: int) -> None:
    """The level is the writer's choice: a reader at the default opens them all, and the
    chunk ID (of the plaintext) does not depend on it, so deduplication holds across it."""
    keys = KeySet.from_master(bytes(range(64)))
    writer, reader = BlobCodec(keys, level), BlobCodec(keys)
    text = b"the quick brown fox jumps over the lazy dog " * 400
    chunk_id, blob = writer.seal_block(text)
    assert blob is not None and reader.open_block(chunk_id, blob) == text
    assert chunk_id == reader.seal_block(text)[0]
    if level == 0:  # none: stored as it is, however compressible
        assert blob[6] == fmt.COMPRESSION_NONE and len(blob) == len(text) + fmt.BLOB_OVERHEAD
    else:
        assert blob[6] == fmt.COMPRESSION_ZSTD and len(blob) < len(text) // 4


def test_faster_levels_trade_size_for_speed_on_the_same_block() -> None:
    keys = KeySet.from_master(bytes(range(64)))
    text = bytes(os.urandom(64).hex() * 128, "ascii")[:16384]  # hex: compressible, not trivially
    sizes = {level: len(BlobCodec(keys, level).seal_block(text)[1] or b"")
             for level in (fmt.MIN_ZSTD_LEVEL, 1, fmt.MAX_ZSTD_LEVEL)}
    assert sizes[fmt.MIN_ZSTD_LEVEL] > sizes[1] >= sizes[fmt.MAX_ZSTD_LEVEL]


@pytest.mark.parametrize("level", [fmt.MIN_ZSTD_LEVEL - 1, fmt.MAX_ZSTD_LEVEL + 1])
def test_a_level_out_of_range_is_refused(level: int) -> None:
    with pytest.raises(ValueError, match=f"compression level must be 0 \\(none\\) or "
                                         f"-7 to 19, not {level}"):
        BlobCodec(KeySet.from_master(bytes(range(64))), level)


def test_zero_block_has_zero_id_and_no_blob(codec: BlobCodec) -> None:
    assert codec.seal_block(bytes(16384)) == (fmt.ZERO_ID, None)
    assert is_zero(bytes(200_000)) and not is_zero(bytes(199_999) + b"\x01")


@settings(max_examples=300, deadline=None)
@given(length=st.integers(0, 140_000), flip=st.integers(0, 139_999) | st.none(),
       as_view=st.booleans())
def test_is_zero_finds_any_non_zero_byte(length: int, flip: int | None, as_view: bool) -> None:
    """Block-sized bytes are compared without a copy, everything else piece by piece:
    both paths see a single non-zero byte anywhere, and nothing in an all-zero buffer."""
    data = bytearray(length)
    if flip is not None and flip < length:
        data[flip] = 0x80
    buf: bytes | memoryview = memoryview(bytes(data)) if as_view else bytes(data)
    assert is_zero(buf) == (flip is None or flip >= length)


def test_chunk_id_is_keyed(codec: BlobCodec) -> None:
    other = BlobCodec(KeySet.from_master(bytes(range(1, 65))))
    data = b"same plaintext"
    assert codec.keys.chunk_id(data) != other.keys.chunk_id(data)
    import hashlib
    assert codec.keys.chunk_id(data) != hashlib.sha256(data).digest()


#: docs/FORMAT.md, "Blocks and chunks": the test vectors of both chunk-ID schemes
#: (id_key = bytes 0..31, plaintext "abc"). A change here breaks every stored point.
ID_VECTORS = {
    ChunkIds.BLAKE3: "891c5790e565eeee0e7914aaed5f778d401b66fdf54674bdf64da1ba64801110",
    ChunkIds.HMAC_SHA256: "f0133729c4163dede81e21cd47839256da58171238c8a0d874397c73b14e1e47",
}


@pytest.mark.parametrize("scheme", list(ChunkIds))
def test_chunk_ids_match_the_specified_vectors(scheme: ChunkIds) -> None:
    keys = KeySet(enc_key=bytes(32), id_key=bytes(range(32)), chunk_ids=scheme)
    assert keys.chunk_id(b"abc").hex() == ID_VECTORS[scheme]
    assert keys.chunk_id(memoryview(b"abc")).hex() == ID_VECTORS[scheme]


def test_blake3_ids_use_a_derived_key_not_the_raw_id_key() -> None:
    import blake3
    keys = KeySet(enc_key=bytes(32), id_key=bytes(range(32)))
    derived = blake3.blake3(keys.id_key, derive_key_context="cdp-appliance 2026-12 chunk id v2")
    assert keys.chunk_id(b"abc") == blake3.blake3(b"abc", key=derived.digest()).digest()
    assert keys.chunk_id(b"abc") != blake3.blake3(b"abc", key=keys.id_key).digest()


def test_a_codec_for_another_scheme_refuses_the_chunks_of_this_one(codec: BlobCodec) -> None:
    chunk_id, blob = codec.seal_block(b"data" * 1000)
    assert codec.with_chunk_ids(codec.keys.chunk_ids) is codec
    older = codec.with_chunk_ids(ChunkIds.HMAC_SHA256)
    with pytest.raises(IntegrityError, match="decrypts to data with another ID"):
        older.open_block(chunk_id, blob)
    old_id, old_blob = older.seal_block(b"data" * 1000)
    assert older.open_block(old_id, old_blob) == b"data" * 1000 and old_id != chunk_id


def test_same_plaintext_gives_same_id_but_fresh_nonce(codec: BlobCodec) -> None:
    id1, blob1 = codec.seal_block(b"x" * 100)
    id2, blob2 = codec.seal_block(b"x" * 100)
    assert id1 == id2 and blob1 != blob2


# Byte position classes of a blob: magic, version, kind, compression, reserved, nonce,
# ciphertext, tag. A flip anywhere must be detected, never decrypted to garbage.
POSITIONS = {"magic": 0, "version": 4, "kind": 5, "compression": 6, "reserved": 7,
             "nonce": 8, "nonce_end": 19, "ciphertext": 20, "tag": -1, "tag_start": -16}


@pytest.mark.parametrize("where", sorted(POSITIONS))
def test_flipped_byte_is_detected(codec: BlobCodec, where: str) -> None:
    chunk_id, blob = codec.seal_block(os.urandom(4096))
    assert blob is not None
    damaged = bytearray(blob)
    damaged[POSITIONS[where]] ^= 0x01
    with pytest.raises((IntegrityError, FormatError)):
        codec.open_block(chunk_id, bytes(damaged))


def test_exact_errors(codec: BlobCodec) -> None:
    chunk_id, blob = codec.seal_block(os.urandom(4096))
    assert blob is not None
    with pytest.raises(FormatError, match="not a sealed blob"):
        codec.open_block(chunk_id, b"XXXX" + blob[4:])
    with pytest.raises(FormatError, match="version 2 is not supported"):
        codec.open_block(chunk_id, blob[:4] + b"\x02" + blob[5:])
    with pytest.raises(IntegrityError, match="blob kind 1 where kind 2 was expected"):
        codec.open(fmt.BLOB_KIND_MANIFEST, chunk_id, blob)
    with pytest.raises(FormatError, match="truncated"):
        codec.open_block(chunk_id, blob[:30])


@pytest.mark.parametrize("cut", [1, 15, 16, 17, 1000])
def test_truncation_is_detected(codec: BlobCodec, cut: int) -> None:
    chunk_id, blob = codec.seal_block(os.urandom(4096))
    assert blob is not None
    with pytest.raises((IntegrityError, FormatError)):
        codec.open_block(chunk_id, blob[:-cut])


def test_swapped_blob_is_detected(codec: BlobCodec) -> None:
    _id_a, blob_a = codec.seal_block(b"A" * 5000)
    id_b, _ = codec.seal_block(b"B" * 5000)
    assert blob_a is not None
    with pytest.raises(IntegrityError, match="failed authentication"):
        codec.open_block(id_b, blob_a)


def test_wrong_key_is_detected(codec: BlobCodec) -> None:
    chunk_id, blob = codec.seal_block(b"secret" * 100)
    other = BlobCodec(KeySet.from_master(os.urandom(64)))
    assert blob is not None
    with pytest.raises(IntegrityError, match="sealed with another key"):
        other.open_block(chunk_id, blob)


def test_authentic_blob_whose_plaintext_has_another_id_is_refused(codec: BlobCodec) -> None:
    # A writer with the encryption key but a wrong ID (a buggy or hostile client).
    fake_id = os.urandom(32)
    blob = codec.seal(fmt.BLOB_KIND_CHUNK, fake_id, b"payload")
    with pytest.raises(IntegrityError, match="decrypts to data with another ID"):
        codec.open_block(fake_id, blob)


def test_master_key_length_is_checked() -> None:
    with pytest.raises(FormatError, match="must be 64 bytes"):
        KeySet.from_master(b"short")


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=70_000))
def test_round_trip_property(data: bytes) -> None:
    codec = BlobCodec(KeySet.from_master(bytes(64)))
    chunk_id, blob = codec.seal_block(data)
    if blob is None:
        assert chunk_id == fmt.ZERO_ID and not any(data)
    else:
        assert codec.open_block(chunk_id, blob) == data



def _sealed_zstd(codec: BlobCodec, kind: int, object_id: bytes, frame: bytes) -> bytes:
    """A blob whose authenticated body is the zstd frame given, as a holder of the key (a
    broken or hostile client) can seal it."""
    import struct

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    header = struct.pack(">4sBBBB12s", fmt.BLOB_MAGIC, fmt.HEADER_VERSION, kind,
                         fmt.COMPRESSION_ZSTD, 0, os.urandom(12))
    body = AESGCM(codec.keys.enc_key).encrypt(header[-12:], frame, header + object_id)
    return header + body


@pytest.mark.parametrize("kind, limit", [(fmt.BLOB_KIND_CHUNK, fmt.MAX_PLAINTEXT_SIZE),
                                         (fmt.BLOB_KIND_MANIFEST, fmt.MAX_MANIFEST_SIZE)])
def test_zstd_frame_stating_a_large_size_is_refused_before_decompressing(
        codec: BlobCodec, kind: int, limit: int) -> None:
    """zstandard ignores max_output_size for a frame whose header states its content
    size and allocates that size: 8 KiB of blob opened to 256 MiB, and a forged header
    claiming 1 TiB raised MemoryError instead of FormatError."""
    import zstandard
    oid = b"m" * 32
    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(256 * 1024 * 1024))
    with pytest.raises(FormatError, match=rf"^blob 6d6d6d6d6d6d6d6d… does not decompress: "
                                          rf"it states 268435456 bytes, more than the "
                                          rf"{limit}-byte maximum$"):
        codec.open(kind, oid, _sealed_zstd(codec, kind, oid, bomb))
    small = zstandard.ZstdCompressor(level=1).compress(b"x" * 100)
    forged = small[:4] + bytes([0xE0]) + (1 << 40).to_bytes(8, "little") + small[6:]
    with pytest.raises(FormatError, match=rf"states 1099511627776 bytes, more than the "
                                          rf"{limit}-byte maximum$"):
        codec.open(kind, oid, _sealed_zstd(codec, kind, oid, forged))
    # The largest plaintext still opens, with or without a stated size; one byte more not.
    for writer in (zstandard.ZstdCompressor(level=1),
                   zstandard.ZstdCompressor(level=1, write_content_size=False)):
        frame = writer.compress(b"\x01" * limit)
        assert codec.open(kind, oid, _sealed_zstd(codec, kind, oid, frame)) == b"\x01" * limit
        frame = writer.compress(b"\x01" * (limit + 1))
        with pytest.raises(FormatError, match="does not decompress"):
            codec.open(kind, oid, _sealed_zstd(codec, kind, oid, frame))


def test_manifest_larger_than_a_block_still_opens(codec: BlobCodec) -> None:
    """Writers set no bound on a manifest and sealed ones of 4 MiB+ opened before the
    zip-bomb check: that check must not make such a point unreadable."""
    body = b'{"layout": "' + b"lvm metadata " * 500_000 + b'"}'
    blob = codec.seal(fmt.BLOB_KIND_MANIFEST, b"cdp-manifest/h/p", body)
    assert len(body) > fmt.MAX_PLAINTEXT_SIZE and blob[6] == fmt.COMPRESSION_ZSTD
    assert codec.open(fmt.BLOB_KIND_MANIFEST, b"cdp-manifest/h/p", blob) == body
