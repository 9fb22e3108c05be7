"""The repository key on the agent: created once and stored on the server wrapped by the
passphrase, or fetched from there and unwrapped (a re-installed host)."""

from __future__ import annotations

from collections.abc import Callable

from cdpcore import format as fmt
from cdpcore import keys
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.errors import ServerError

from .remote import Remote


def establish_key(remote: Remote, host: str, passphrase: Callable[[bool], str]
                  ) -> tuple[bytes, bool]:
    """Returns (master key, created). `passphrase(new)` gives the passphrase, `new` when it
    is to wrap a key made now. Raises WrongKeyError for a wrong passphrase."""
    doc = remote.get_key(host)
    if doc is not None:
        return keys.WrappedKey.from_json(doc).unwrap(passphrase(False)), False
    secret = passphrase(True)
    master = keys.new_master_key()
    wrapped = keys.WrappedKey.create(master, secret)
    try:
        remote.put_key(host, wrapped.to_json())
    except ServerError as exc:
        if exc.status != 409:
            raise
        # Another agent of this host stored its key first (keys are never overwritten):
        # use that one.
        doc = remote.get_key(host)
        if doc is None:
            raise ServerError(f"the server neither stored nor returned the key of {host}") \
                from None
        return keys.WrappedKey.from_json(doc).unwrap(secret), False
    return master, True


def codec_for_host(remote: Remote, host: str, recovery_key: str,
                   level: int = fmt.ZSTD_LEVEL) -> BlobCodec:
    """The codec of the configured recovery key, sealing at zstd `level`, refused if it is
    not the host's key: points sealed under another key could not be opened with the
    host's passphrase."""
    return BlobCodec(KeySet.from_master(
        keys.master_from_recovery_key(recovery_key, remote.get_key(host))), level)
