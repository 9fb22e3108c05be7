"""The binary record stream of batch uploads and fetches."""

from __future__ import annotations

import contextlib
import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdpcore import records
from cdpcore.errors import FormatError, IntegrityError


def test_round_trip() -> None:
    items = [(os.urandom(32), os.urandom(n)) for n in (0, 1, 5000)]
    decoded = list(records.decode_records(records.encode_records(items)))
    assert [(i, b) for i, _, b in decoded] == items


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
        list(records.decode_records(data[:40]))
    with pytest.raises(FormatError, match="70 bytes announced, 69 present"):
        list(records.decode_records(data[:-1]))
    data[-1] ^= 1
    with pytest.raises(IntegrityError, match="does not match its checksum"):
        list(records.decode_records(data))
    # A reader that authenticates blobs itself skips the checksum, not the framing.
    assert [b for _, _, b in records.decode_records(data, verify=False)] == [bytes(data[68:])]
    with pytest.raises(FormatError, match="70 bytes announced, 69 present"):
        list(records.decode_records(data[:-1], verify=False))


def test_checked_records_carry_the_given_checksum() -> None:
    blob = b"stored blob"
    checksum = hashlib.sha256(blob).digest()
    assert records.encode_checked_records([(bytes(32), blob, checksum)]) == \
        records.encode_records([(bytes(32), blob)])


def test_absurd_length_refused_before_reading() -> None:
    header = bytes(64) + (2**31).to_bytes(4, "big")
    with pytest.raises(FormatError, match="claims 2147483648 bytes"):
        list(records.decode_records(header))


def test_record_count_limit() -> None:
    data = records.encode_records([(bytes(32), b"")] * 3)
    with pytest.raises(FormatError, match="more than 2 records"):
        list(records.decode_records(data, max_count=2))


@given(st.binary(max_size=300))
def test_garbage_never_crashes(data: bytes) -> None:
    with contextlib.suppress(FormatError, IntegrityError):
        list(records.decode_records(data))


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=40),
       st.integers(min_value=1, max_value=800), st.integers(min_value=1, max_value=6))
def test_split_records_keeps_order_and_both_limits(sizes: list[int], max_bytes: int,
                                                   max_count: int) -> None:
    items = [(bytes([i]) * 32, b"x" * n) for i, n in enumerate(sizes)]
    parts = list(records.split_records(items, max_bytes, max_count))
    assert [item for part in parts for item in part] == items
    for part in parts:
        assert 1 <= len(part) <= max_count
        # Over the byte limit only as a single record that alone exceeds it.
        assert len(part) == 1 or len(records.encode_records(part)) <= max_bytes
