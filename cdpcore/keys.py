"""The repository master key: creation, wrapping by a passphrase, printable recovery keys
(docs/FORMAT.md, "Keys").

The master key is 64 random bytes (see KeySet). It is stored on the server only wrapped:
AES-256-GCM under a key derived from the passphrase with scrypt, so that a sysadmin in the
rescue environment needs nothing but the passphrase. It can also be exported as a
printable recovery key, which opens the repository without the key file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from . import format as fmt
from .crypto import KeySet
from .errors import FormatError, WrongKeyError, shown

_WRAP_AAD = b"cdp-master-key-v1"
_CHECK_LABEL = b"cdp-key-check-v1"
_RECOVERY_PREFIX = "CDP1"
_SALT_SIZE = 16
_CHECK = re.compile(r"[0-9a-f]{32}")


def new_master_key() -> bytes:
    return os.urandom(fmt.MASTER_KEY_SIZE)


def key_check(master: bytes) -> str:
    """A short public fingerprint that tells whether a key belongs to a repository,
    without revealing anything about the key."""
    return hmac.digest(KeySet.from_master(master).id_key, _CHECK_LABEL, "sha256")[:16].hex()


def _kek(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    try:
        secret = passphrase.encode("utf-8")
    except UnicodeEncodeError:
        # Bytes that are not UTF-8 (a terminal, file or environment variable in another
        # encoding) reach us as lone surrogates; no key file can have been made with them.
        raise WrongKeyError("the passphrase is not UTF-8 text: it holds bytes of another "
                            "encoding (a terminal, file or environment variable not in "
                            "UTF-8?)") from None
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(secret)


@dataclass(frozen=True)
class WrappedKey:
    """The key file: the master key wrapped by a passphrase. Safe to store on the server."""

    salt: bytes
    nonce: bytes
    wrapped: bytes
    check: str
    n: int = fmt.SCRYPT_N
    r: int = fmt.SCRYPT_R
    p: int = fmt.SCRYPT_P

    @classmethod
    def create(cls, master: bytes, passphrase: str, *, n: int = fmt.SCRYPT_N) -> WrappedKey:
        if not passphrase:
            raise WrongKeyError("the key passphrase must not be empty")
        salt, nonce = os.urandom(_SALT_SIZE), os.urandom(fmt.NONCE_SIZE)
        kek = _kek(passphrase, salt, n, fmt.SCRYPT_R, fmt.SCRYPT_P)
        wrapped = AESGCM(kek).encrypt(nonce, master, _WRAP_AAD)
        return cls(salt=salt, nonce=nonce, wrapped=wrapped, check=key_check(master), n=n)

    def unwrap(self, passphrase: str) -> bytes:
        kek = _kek(passphrase, self.salt, self.n, self.r, self.p)
        try:
            master = AESGCM(kek).decrypt(self.nonce, self.wrapped, _WRAP_AAD)
        except InvalidTag:
            raise WrongKeyError("wrong passphrase (or the key file was altered)") from None
        if key_check(master) != self.check:
            raise WrongKeyError("key file is inconsistent: its check value does not match its key")
        return master

    def to_json(self) -> dict[str, Any]:
        b64 = base64.b64encode
        return {
            "version": fmt.KEY_FILE_VERSION,
            "kdf": {"name": "scrypt", "n": self.n, "r": self.r, "p": self.p,
                    "salt": b64(self.salt).decode()},
            "cipher": "aes-256-gcm",
            "nonce": b64(self.nonce).decode(),
            "wrapped": b64(self.wrapped).decode(),
            "check": self.check,
        }

    @classmethod
    def from_json(cls, doc: Any) -> WrappedKey:
        try:
            if doc["version"] != fmt.KEY_FILE_VERSION:
                raise FormatError(f"key file version {shown(doc['version'])} is not supported")
            kdf = doc["kdf"]
            if kdf["name"] != "scrypt" or doc["cipher"] != "aes-256-gcm":
                raise FormatError(f"key file uses unknown kdf/cipher {shown(kdf['name'])}/"
                                  f"{shown(doc['cipher'])}")
            n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
            # Bounds keep a hostile key file from making us allocate gigabytes: each
            # parameter's alone still let n = 2^20, r = 32 take 4 GiB (128 x n x r).
            if not (2**10 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16) or n & (n - 1) \
                    or 128 * n * r > fmt.MAX_SCRYPT_MEMORY:
                raise FormatError(f"key file has out-of-range scrypt parameters n={n} r={r} p={p}")
            wrapped = base64.b64decode(doc["wrapped"], validate=True)
            nonce = base64.b64decode(doc["nonce"], validate=True)
            salt = base64.b64decode(kdf["salt"], validate=True)
            check = doc["check"]
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise FormatError(f"malformed key file: {exc!r}") from None
        # Compared with hmac.compare_digest, which raises TypeError on non-ASCII text.
        if not isinstance(check, str) or not _CHECK.fullmatch(check):
            raise FormatError("malformed key file: check is not 32 lower-case hex digits")
        if len(nonce) != fmt.NONCE_SIZE or len(wrapped) != fmt.MASTER_KEY_SIZE + fmt.TAG_SIZE:
            raise FormatError("malformed key file: wrong nonce or wrapped-key length")
        if len(salt) != _SALT_SIZE:
            raise FormatError(f"malformed key file: the salt is not {_SALT_SIZE} bytes")
        return cls(salt=salt, nonce=nonce, wrapped=wrapped, check=check, n=n, r=r, p=p)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def loads(cls, text: str) -> WrappedKey:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise FormatError(f"key file is not JSON: {exc}") from None
        except RecursionError:  # json's parser recurses once per nesting level
            raise FormatError("key file is not JSON: nested too deeply") from None
        return cls.from_json(doc)


def recovery_key(master: bytes) -> str:
    """Printable form: CDP1-XXXXX-XXXXX-... (base32 of key || 4-byte SHA-256 checksum)."""
    body = base64.b32encode(master + hashlib.sha256(master).digest()[:4]).decode().rstrip("=")
    groups = [body[i:i + 5] for i in range(0, len(body), 5)]
    return "-".join([_RECOVERY_PREFIX, *groups])


def parse_recovery_key(text: str) -> bytes:
    cleaned = "".join(text.split()).upper().replace("-", "")
    if not cleaned.startswith(_RECOVERY_PREFIX):
        raise FormatError("not a recovery key: it must start with CDP1-")
    body = cleaned[len(_RECOVERY_PREFIX):]
    expected = -(-(fmt.MASTER_KEY_SIZE + 4) * 8 // 5)
    if len(body) != expected:
        raise FormatError(f"recovery key has the wrong length ({len(body)} characters "
                          f"after CDP1-, {expected} expected)")
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError:
        raise FormatError("recovery key contains characters outside A-Z and 2-7") from None
    master, checksum = raw[:-4], raw[-4:]
    if hashlib.sha256(master).digest()[:4] != checksum:
        raise FormatError("recovery key checksum mismatch: a character was mistyped")
    return master


def master_from_recovery_key(text: str, key_doc: Any | None, *,
                             unreadable_key_file_ok: bool = False) -> bytes:
    """The master key of a printable recovery key, checked against the host's key file
    where it has one: a recovery key of another repository is refused here, by name,
    instead of failing later on the first blob as if the data were damaged.

    A key file that cannot be read (damaged on the server) raises FormatError, unless
    `unreadable_key_file_ok`: a restore, which then relies on the first sealed manifest to
    refuse a key of another repository (the recovery key is what opens a repository whose
    key file is lost). An agent keeps refusing: it would seal new points under a key it
    cannot check."""
    master = parse_recovery_key(text)
    if key_doc is not None:
        try:
            expected = WrappedKey.from_json(key_doc).check
        except FormatError:
            if unreadable_key_file_ok:
                return master
            raise
        if not hmac.compare_digest(key_check(master), expected):
            raise WrongKeyError(f"this recovery key belongs to another repository: its "
                                f"fingerprint {key_check(master)} is not the host key's "
                                f"{expected}")
    return master
