"""The binary record stream of batch uploads and fetches."""

from __future__ import annotations

import contextlib
import hashlib
import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdpcore import records
from cdpcore.errors import FormatError, IntegrityError


@pytest.mark.parametrize("form", [records.V1, records.V2], ids=["v1", "v2"])
def test_round_trip(form: records.RecordFormat) -> None:
    items = [(os.urandom(32), os.urandom(n)) for n in (0, 1, 5000)]
    decoded = list(records.decode_records(records.encode_records(items, form), form))
    assert [(i, b) for i, _, b in decoded] == items
    assert [c for _, c, _ in decoded] == [form.checksum(b) for _, b in items]


def test_the_two_versions_on_the_wire() -> None:
    """v2: id || CRC-32 (zlib's, big-endian) || length || blob; v1: id || SHA-256 || ..."""
    oid, blob = bytes(range(32)), b"blob bytes"
    assert records.encode_record(oid, blob, records.V2) == \
        oid + zlib.crc32(blob).to_bytes(4, "big") + len(blob).to_bytes(4, "big") + blob
    assert records.encode_record(oid, blob, records.V1) == \
        oid + hashlib.sha256(blob).digest() + len(blob).to_bytes(4, "big") + blob
    assert records.encode_record(oid, blob) == records.encode_record(oid, blob, records.V2)
    # Read as the other version, these records fail loudly.
    with pytest.raises((FormatError, IntegrityError)):
        list(records.decode_records(records.encode_record(oid, blob, records.V1), records.V2))
    with pytest.raises((FormatError, IntegrityError)):
        list(records.decode_records(records.encode_record(oid, blob, records.V2), records.V1))


def test_stored_checksums_are_checked_by_their_own_algorithm() -> None:
    blob = b"stored blob"
    assert records.checksum_matches(blob, zlib.crc32(blob).to_bytes(4, "big"))
    assert records.checksum_matches(blob, hashlib.sha256(blob).digest())
    assert not records.checksum_matches(blob + b"!", zlib.crc32(blob).to_bytes(4, "big"))
    assert not records.checksum_matches(blob + b"!", hashlib.sha256(blob).digest())
    assert not records.checksum_matches(blob, hashlib.sha256(blob).digest()[:16])


def test_record_views_are_the_blobs_without_a_copy() -> None:
    items = [(os.urandom(32), os.urandom(n)) for n in (0, 1, 5000)]
    data = records.encode_records(items)
    views = list(records.decode_record_views(data))
    assert [(i, bytes(b)) for i, _, b in views] == items
    assert all(isinstance(b, memoryview) and b.obj is data for _, _, b in views)
    damaged = bytearray(data)
    damaged[-1] ^= 1
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        list(records.decode_record_views(bytes(damaged)))


def test_damage_and_truncation() -> None:
    data = bytearray(records.encode_records([(bytes(32), b"payload" * 10)]))
    with pytest.raises(FormatError, match="truncated in a header"):
        list(records.decode_records(data[:39]))
    with pytest.raises(FormatError, match="70 bytes announced, 69 present"):
        list(records.decode_records(data[:-1]))
    data[-1] ^= 1
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        list(records.decode_records(data))
    # A reader that authenticates blobs itself skips the checksum, not the framing.
    assert [b for _, _, b in records.decode_records(data, verify=False)] == [bytes(data[40:])]
    with pytest.raises(FormatError, match="70 bytes announced, 69 present"):
        list(records.decode_records(data[:-1], verify=False))


def test_checked_records_carry_the_given_checksum_or_compute_the_answers() -> None:
    blob, oid = b"stored blob", bytes(32)
    for form in (records.V1, records.V2):
        # given in the answer's algorithm: reused as it is (not recomputed)
        given = bytes(form.checksum_size)
        assert records.encode_checked_records([(oid, blob, given)], form) == \
            oid + given + len(blob).to_bytes(4, "big") + blob
    # stored by the other version's upload: computed for the answer
    assert records.encode_checked_records([(oid, blob, hashlib.sha256(blob).digest())],
                                          records.V2) == records.encode_record(oid, blob)
    assert records.encode_checked_records([(oid, blob, zlib.crc32(blob).to_bytes(4, "big"))],
                                          records.V1) == \
        records.encode_record(oid, blob, records.V1)


def test_absurd_length_refused_before_reading() -> None:
    header = bytes(36) + (2**31).to_bytes(4, "big")
    with pytest.raises(FormatError, match="claims 2147483648 bytes"):
        list(records.decode_records(header))


def test_record_count_limit() -> None:
    data = records.encode_records([(bytes(32), b"")] * 3)
    with pytest.raises(FormatError, match="more than 2 records"):
        list(records.decode_records(data, max_count=2))


@given(st.binary(max_size=300), st.sampled_from([records.V1, records.V2]))
def test_garbage_never_crashes(data: bytes, form: records.RecordFormat) -> None:
    with contextlib.suppress(FormatError, IntegrityError):
        list(records.decode_records(data, form))


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=40),
       st.integers(min_value=1, max_value=800), st.integers(min_value=1, max_value=6))
def test_split_records_keeps_order_and_both_limits(sizes: list[int], max_bytes: int,
                                                   max_count: int) -> None:
    items = [(bytes([i]) * 32, b"x" * n) for i, n in enumerate(sizes)]
    parts = list(records.split_records(items, max_bytes, max_count))
    assert [item for part in parts for item in part] == items
    for part in parts:
        assert 1 <= len(part) <= max_count
        # Over the byte limit only as a single record that alone exceeds it, in either
        # version.
        assert len(part) == 1 or len(records.encode_records(part, records.V1)) <= max_bytes
