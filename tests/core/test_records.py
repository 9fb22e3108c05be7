"""The binary record stream of batch uploads and fetches, in both versions: BLAKE3
checksums (version 2, what clients upload) and SHA-256 (version 1, from older agents)."""

from __future__ import annotations

import contextlib
import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdpcore import records
from cdpcore.errors import FormatError, IntegrityError

BOTH = pytest.mark.parametrize("algorithm", list(records.Checksum))


def test_checksum_vectors_and_media_types() -> None:
    """A record's header carries the blob's checksum in the stream's algorithm."""
    want = {records.Checksum.SHA256: "ba7816bf8f01cfea414140de5dae2223"
                                     "b00361a396177a9cb410ff61f20015ad",
            records.Checksum.BLAKE3: "6437b3ac38465133ffb63b75273a8db5"
                                     "48c558465d79db03fd359c6cd5bd9d85"}
    for algorithm, digest in want.items():
        record = records.encode_record(bytes(32), b"abc", algorithm)
        assert record == bytes(32) + bytes.fromhex(digest) + (3).to_bytes(4, "big") + b"abc"
    assert records.encode_record(bytes(32), b"abc") == \
        records.encode_record(bytes(32), b"abc", records.Checksum.BLAKE3)
    assert records.checksum_of_media_type("application/x-cdp-records-v2") is \
        records.Checksum.BLAKE3
    assert records.checksum_of_media_type("Application/X-CDP-Records; charset=x") is \
        records.Checksum.SHA256
    assert records.checksum_of_media_type("application/x-cdp-records-v3") is None
    assert records.checksum_of_media_type("") is None


@BOTH
def test_round_trip(algorithm: records.Checksum) -> None:
    items = [(os.urandom(32), os.urandom(n)) for n in (0, 1, 5000)]
    decoded = list(records.decode_records(records.encode_records(items, algorithm), algorithm))
    assert [(i, b) for i, _, b in decoded] == items
    assert [c for _, c, _ in decoded] == [algorithm.digest(b) for _, b in items]


def test_a_stream_read_with_the_other_checksum_is_refused() -> None:
    data = records.encode_records([(bytes(32), b"payload")], records.Checksum.BLAKE3)
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        list(records.decode_records(data, records.Checksum.SHA256))


@BOTH
def test_record_views_are_the_blobs_without_a_copy(algorithm: records.Checksum) -> None:
    items = [(os.urandom(32), os.urandom(n)) for n in (0, 1, 5000)]
    data = records.encode_records(items, algorithm)
    views = list(records.decode_record_views(data, algorithm))
    assert [(i, bytes(b)) for i, _, b in views] == items
    assert all(isinstance(b, memoryview) and b.obj is data for _, _, b in views)
    damaged = bytearray(data)
    damaged[-1] ^= 1
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        list(records.decode_record_views(bytes(damaged), algorithm))


@BOTH
def test_damage_and_truncation(algorithm: records.Checksum) -> None:
    data = bytearray(records.encode_records([(bytes(32), b"payload" * 10)], algorithm))
    with pytest.raises(FormatError, match="truncated in a header"):
        list(records.decode_records(data[:40], algorithm))
    with pytest.raises(FormatError, match="70 bytes announced, 69 present"):
        list(records.decode_records(data[:-1], algorithm))
    data[-1] ^= 1
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        list(records.decode_records(data, algorithm))
    # A reader that authenticates blobs itself skips the checksum, not the framing.
    assert [b for _, _, b in records.decode_records(data, None)] == [bytes(data[68:])]
    with pytest.raises(FormatError, match="70 bytes announced, 69 present"):
        list(records.decode_records(data[:-1], None))


def test_checked_records_carry_the_given_checksum() -> None:
    blob = b"stored blob"
    checksum = hashlib.sha256(blob).digest()
    assert records.encode_checked_records([(bytes(32), blob, checksum)]) == \
        records.encode_records([(bytes(32), blob)], records.Checksum.SHA256)


def test_absurd_length_refused_before_reading() -> None:
    header = bytes(64) + (2**31).to_bytes(4, "big")
    with pytest.raises(FormatError, match="claims 2147483648 bytes"):
        list(records.decode_records(header, records.Checksum.BLAKE3))


def test_record_count_limit() -> None:
    data = records.encode_records([(bytes(32), b"")] * 3)
    with pytest.raises(FormatError, match="more than 2 records"):
        list(records.decode_records(data, records.Checksum.BLAKE3, max_count=2))


@given(st.binary(max_size=300), st.sampled_from(list(records.Checksum)))
def test_garbage_never_crashes(data: bytes, algorithm: records.Checksum) -> None:
    with contextlib.suppress(FormatError, IntegrityError):
        list(records.decode_records(data, algorithm))
