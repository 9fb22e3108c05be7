"""Scan fingerprints: how a scan tells an unchanged block from a changed one at BLAKE3
speed (6.0 GB/s on one core here against 1.9 GB/s for the HMAC-SHA256 of a chunk ID,
`python -m bench.pipeline`), so a full read of a mostly unchanged volume costs little more than the
read itself.

A fingerprint is keyed BLAKE3 of the block, truncated to 16 bytes, under a key derived
from the repository's ID key: without the key nobody can make two blocks that share a
fingerprint, so a block written between points can never pass for the old one. It lives
only in the agent's local state, beside the block's chunk ID; the server never sees it,
and the chunk ID (HMAC-SHA256, docs/FORMAT.md) stays what identifies a block.
"""

from __future__ import annotations

import blake3

from .state import FINGERPRINT_SIZE

#: Marks a block whose fingerprint is unknown (never hashed, or all-zero): it is hashed in
#: full. A real fingerprint equals it with probability 2**-128.
UNKNOWN = bytes(FINGERPRINT_SIZE)

_CONTEXT = "cdp-appliance 2026-12 agent scan fingerprint v1"


class Fingerprinter:
    def __init__(self, id_key: bytes) -> None:
        self._key = blake3.blake3(id_key, derive_key_context=_CONTEXT).digest()

    def __call__(self, block: bytes | memoryview) -> bytes:
        return blake3.blake3(block, key=self._key).digest(FINGERPRINT_SIZE)
