"""The wrapped master key and printable recovery keys."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

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


@pytest.mark.parametrize("check", ["é" * 32, "0" * 31, "A" * 32, None, 12345])
def test_key_file_check_must_be_32_hex_digits(check: object) -> None:
    """`check` was taken as str(anything): a non-ASCII one made the recovery-key path
    raise TypeError (hmac.compare_digest) instead of FormatError. A restore's recovery key
    still opens the repository (test_a_damaged_key_file_does_not_lock_out_the_recovery_key)."""
    master = new_master_key()
    doc = WrappedKey.create(master, "pw", n=2**10).to_json() | {"check": check}
    with pytest.raises(FormatError, match=r"^malformed key file: check is not 32 lower-case "
                                          r"hex digits$"):
        master_from_recovery_key(recovery_key(master), doc)


@pytest.mark.parametrize("salt", [b"", b"s" * 15, b"s" * 17])
def test_key_file_salt_must_be_16_bytes(salt: bytes) -> None:
    doc = WrappedKey.create(new_master_key(), "pw", n=2**10).to_json()
    doc["kdf"]["salt"] = base64.b64encode(salt).decode()
    with pytest.raises(FormatError, match=r"^malformed key file: the salt is not 16 bytes$"):
        WrappedKey.from_json(doc)


def test_key_file_scrypt_memory_is_bounded() -> None:
    """Each parameter within its bounds, n = 2^20 and r = 32 together made scrypt take
    4 GiB (128 x n x r): unwrapping raised MemoryError on a small machine instead of the
    key file being refused."""
    doc = WrappedKey.create(new_master_key(), "pw", n=2**10).to_json()
    doc["kdf"].update(n=2**20, r=32)
    with pytest.raises(FormatError, match=r"^key file has out-of-range scrypt parameters "
                                          r"n=1048576 r=32 p=1$"):
        WrappedKey.from_json(doc)
    # Every key file a writer makes (r = 8) within the n bound is still read.
    doc["kdf"].update(n=2**20, r=8)
    assert WrappedKey.from_json(doc).n == 2**20


def test_deeply_nested_key_file_is_a_format_error() -> None:
    with pytest.raises(FormatError, match=r"^key file is not JSON: nested too deeply$"):
        WrappedKey.loads("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("passphrase", ["caf\udce9", "\ud800pw"])
def test_a_passphrase_that_is_not_utf8_text_is_a_wrong_key_error(passphrase: str) -> None:
    """A passphrase holding bytes that are not UTF-8 (an environment variable or a
    terminal in Latin-1: Python decodes them to lone surrogates) raised UnicodeEncodeError
    out of scrypt's input: a traceback in `rescue restore`, exit 1 instead of 5 in
    `rescue auto`, where a wrong passphrase belongs."""
    wrapped = WrappedKey.create(new_master_key(), "café", n=2**10)
    with pytest.raises(WrongKeyError, match=r"^the passphrase is not UTF-8 text"):
        wrapped.unwrap(passphrase)
    with pytest.raises(WrongKeyError, match=r"^the passphrase is not UTF-8 text"):
        WrappedKey.create(new_master_key(), passphrase, n=2**10)


@pytest.mark.parametrize("damage", [
    lambda d: d.update(wrapped=d["wrapped"][:-4]),
    lambda d: d.update(version=2),
    lambda d: d["kdf"].update(salt="!"),
    lambda d: d.pop("kdf"),
    lambda d: d.update(check="not hex"),
])
def test_a_damaged_key_file_does_not_lock_out_the_recovery_key(damage) -> None:  # type: ignore[no-untyped-def]
    """The recovery key opens the repository without the key file, but a key file the
    server returned damaged (a flipped byte in its catalog) was parsed first to compare
    fingerprints and its FormatError refused the right recovery key: no restore at all.
    A key file that cannot be read has no fingerprint to compare with; a recovery key of
    another repository is still refused by the first sealed manifest it fails to open."""
    master = new_master_key()
    doc = WrappedKey.create(master, "pw", n=2**10).to_json()
    damage(doc)
    with pytest.raises(FormatError):  # an agent, which would seal under an unchecked key
        master_from_recovery_key(recovery_key(master), doc)
    assert master_from_recovery_key(recovery_key(master), doc,
                                    unreadable_key_file_ok=True) == master
    # A key file that does parse still names a recovery key of another repository.
    good = WrappedKey.create(master, "pw", n=2**10).to_json()
    with pytest.raises(WrongKeyError, match="belongs to another repository"):
        master_from_recovery_key(recovery_key(new_master_key()), good,
                                 unreadable_key_file_ok=True)


def _nested(depth: int) -> Any:
    """The most deeply nested list json.loads makes at this depth of the stack."""
    while True:
        try:
            return json.loads("[" * depth + "]" * depth)
        except RecursionError:
            depth -= 1


def _called_deeper(frames: int, fn: Callable[[], Any]) -> Any:
    return fn() if frames == 0 else _called_deeper(frames - 1, fn)


def test_key_file_values_are_shown_bounded_in_errors() -> None:
    """A key file's version, kdf and cipher names went into the error message with str():
    a server's `"version": [0, 1, ..., 999999]` made a message of 7.9 MB for the rescue to
    print on every console (minutes of a serial line), and a list nested as deeply as
    the JSON parser allows raised RecursionError out of from_json when called a few
    frames deeper than the parse."""
    doc = WrappedKey.create(new_master_key(), "pw", n=2**10).to_json()
    doc["version"] = list(range(1_000_000))
    with pytest.raises(FormatError, match=r"^key file version \[0, 1, 2, 3, 4, 5, \.\.\.\] "
                                          r"is not supported$"):
        WrappedKey.from_json(doc)
    deep = {"version": 1, "kdf": {"name": _nested(2000)}, "cipher": "aes-256-gcm"}
    with pytest.raises(FormatError, match=r"^key file uses unknown kdf/cipher \[\[\[\[\.\.\.\]\]\]\]/"
                                          r"'aes-256-gcm'$"):
        _called_deeper(30, lambda: WrappedKey.from_json(deep))
