"""The wrapped master key and printable recovery keys."""

from __future__ import annotations

import json

import pytest

from cdpcore.errors import FormatError, WrongKeyError
from cdpcore.keys import (
    WrappedKey,
    master_from_recovery_key,
    new_master_key,
    parse_recovery_key,
    recovery_key,
)

FAST_N = 2**14  # scrypt cost for tests; the default (2**15) is exercised once below


def test_wrap_unwrap_with_default_cost() -> None:
    master = new_master_key()
    wrapped = WrappedKey.create(master, "correct horse")
    assert wrapped.n == 2**15
    assert WrappedKey.loads(wrapped.dumps()).unwrap("correct horse") == master


def test_wrong_passphrase() -> None:
    wrapped = WrappedKey.create(new_master_key(), "right", n=FAST_N)
    with pytest.raises(WrongKeyError, match="wrong passphrase"):
        wrapped.unwrap("wrong")


def test_empty_passphrase_refused() -> None:
    with pytest.raises(WrongKeyError, match="must not be empty"):
        WrappedKey.create(new_master_key(), "", n=FAST_N)


def test_tampered_key_file() -> None:
    doc = WrappedKey.create(new_master_key(), "pw", n=FAST_N).to_json()
    doc["check"] = "0" * 32
    with pytest.raises(WrongKeyError, match="inconsistent"):
        WrappedKey.from_json(doc).unwrap("pw")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=9), "version 9 is not supported"),
    (lambda d: d["kdf"].update(name="pbkdf2"), "unknown kdf"),
    (lambda d: d["kdf"].update(n=2**30), "out-of-range scrypt"),
    (lambda d: d["kdf"].update(n=3000), "out-of-range scrypt"),
    (lambda d: d.update(wrapped="AAAA"), "wrong nonce or wrapped-key length"),
    (lambda d: d.pop("nonce"), "malformed key file"),
    (lambda d: d.update(nonce="!!notbase64"), "malformed key file"),
])
def test_malformed_key_files(mutate, message) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(WrappedKey.create(new_master_key(), "pw", n=FAST_N).dumps())
    mutate(doc)
    with pytest.raises(FormatError, match=message):
        WrappedKey.from_json(doc)


def test_key_file_not_json() -> None:
    with pytest.raises(FormatError, match="not JSON"):
        WrappedKey.loads("{nope")


def test_recovery_key_round_trip_and_typos() -> None:
    master = new_master_key()
    text = recovery_key(master)
    assert text.startswith("CDP1-")
    assert parse_recovery_key(text) == master
    assert parse_recovery_key(text.lower().replace("-", " ")) == master
    # One mistyped character is caught by the checksum, not taken as another key.
    pos = 12  # inside the second group
    typo = text[:pos] + ("A" if text[pos] != "A" else "B") + text[pos + 1:]
    with pytest.raises(FormatError, match="mistyped"):
        parse_recovery_key(typo)
    with pytest.raises(FormatError, match="wrong length"):
        parse_recovery_key(text[:-5])
    with pytest.raises(FormatError, match="start with CDP1-"):
        parse_recovery_key("XYZ1-AAAAA")
    with pytest.raises(FormatError, match="outside A-Z"):
        parse_recovery_key(text[:-1] + "1")


def test_recovery_key_is_checked_against_the_host_key_file() -> None:
    master = new_master_key()
    key_file = WrappedKey.create(master, "pw", n=2**10).to_json()
    assert master_from_recovery_key(recovery_key(master), key_file) == master
    assert master_from_recovery_key(recovery_key(master), None) == master  # no key file
    with pytest.raises(WrongKeyError, match="belongs to another repository"):
        master_from_recovery_key(recovery_key(new_master_key()), key_file)
