"""Read-back verification: re-read a restored volume from its target and check every
block against the point's index (keyed chunk IDs; all-zero blocks must read as zeros)."""

from __future__ import annotations

from collections.abc import Callable

from cdpcore import format as fmt
from cdpcore.crypto import BlobCodec, is_zero
from cdpcore.errors import IntegrityError
from cdpcore.index import PageSource, iter_block_ids
from cdpcore.manifest import VolumeRecord

from .target import Target

_READ_BYTES = 4 * 1024 * 1024
ChunkFetcher = Callable[[bytes], bytes]


def _masked_equal(data: bytes, original: bytes, start: int,
                  ignore: list[tuple[int, int]]) -> bool:
    """Compare two blocks outside the volume byte ranges `ignore` ([begin, end) pairs)."""
    a, b = bytearray(data), bytearray(original)
    for begin, end in ignore:
        lo, hi = max(begin - start, 0), min(end - start, len(a))
        if lo < hi:
            a[lo:hi] = b[lo:hi] = bytes(hi - lo)
    return a == b


def verify_volume(pages: PageSource, codec: BlobCodec, vol: VolumeRecord, target: Target,
                  base: int, on_progress: Callable[[int], None] | None = None, *,
                  ignore: list[tuple[int, int]] | None = None,
                  chunks: ChunkFetcher | None = None) -> None:
    """Raise IntegrityError naming the differing byte ranges (up to 5). Blocks touching an
    `ignore` range (a boot area's partition table, rewritten on purpose) are compared
    with the original chunk, fetched through `chunks`, outside those ranges."""
    geo = vol.geometry
    bad: list[str] = []
    buf, buf_start = b"", 0
    for index, cid in iter_block_ids(geo, pages, vol.root_id):
        offset, length = index * vol.block_size, geo.block_length(index)
        if not buf_start <= offset < buf_start + len(buf):
            buf_start = offset
            buf = target.read(base + offset, min(_READ_BYTES, vol.size - offset))
        data = buf[offset - buf_start: offset - buf_start + length]
        if ignore and chunks and any(b < offset + length and offset < e for b, e in ignore):
            original = (bytes(length) if cid == fmt.ZERO_ID
                        else codec.open_block(cid, chunks(cid)))
            ok = _masked_equal(data, original, offset, ignore)
        else:
            ok = is_zero(data) if cid == fmt.ZERO_ID else codec.keys.chunk_id(data) == cid
        if len(data) != length or not ok:
            bad.append(f"{offset}-{offset + length - 1}")
        if on_progress:
            on_progress(length)
    if bad:
        shown = bad[:5] + (["…"] if len(bad) > 5 else [])
        raise IntegrityError(f"read-back of volume {vol.name} found {len(bad)} bad blocks "
                             f"at bytes {', '.join(shown)}")
