"""The repository key on the agent: created once and stored on the server wrapped by the
passphrase, or fetched from there and unwrapped (a re-installed host)."""

from __future__ import annotations

from cdpcore import keys
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.errors import ServerError

from .remote import Remote


def establish_key(remote: Remote, host: str, passphrase: str) -> tuple[bytes, bool]:
    """Returns (master key, created). Raises WrongKeyError for a wrong passphrase."""
    doc = remote.get_key(host)
    if doc is not None:
        return keys.WrappedKey.from_json(doc).unwrap(passphrase), False
    master = keys.new_master_key()
    wrapped = keys.WrappedKey.create(master, passphrase)
    if remote.put_key(host, wrapped.to_json()) is False:
        # Another agent of this host stored a key meanwhile: use that one.
        doc = remote.get_key(host)
        if doc is None:
            raise ServerError(f"the server neither stored nor returned the key of {host}")
        return keys.WrappedKey.from_json(doc).unwrap(passphrase), False
    return master, True


def codec_from_recovery_key(text: str) -> BlobCodec:
    return BlobCodec(KeySet.from_master(keys.parse_recovery_key(text)))
