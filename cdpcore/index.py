"""The block index of a volume: a content-addressed tree of fixed-fanout pages
(docs/FORMAT.md, "Index tree").

Leaf pages hold the chunk IDs of consecutive blocks; interior pages hold the IDs of the
pages below. A page's ID is the SHA-256 of its bytes, so a point whose volume changed in k
blocks writes only the k leaves that hold them and the pages on their paths to the root:
everything else is shared with the previous point. A page whose entries are all ZERO_ID
(an all-zero region) has the ID ZERO_ID itself and is never stored, so an empty 1 TiB
volume costs nothing but its root entry.

Pages are not encrypted: they hold only keyed chunk IDs, which reveal nothing about
content; the server needs to read them to check commits, collect garbage and verify.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from . import format as fmt
from .errors import FormatError, IntegrityError, NotFoundError

_PAGE_HEADER = struct.Struct(">4sBBH")
assert _PAGE_HEADER.size == fmt.PAGE_HEADER_SIZE

PageSink = Callable[[bytes, bytes], None]
"""Receives (page ID, page bytes) for every new page a build or update produces."""


class PageSource(Protocol):
    def get_pages(self, page_ids: list[bytes]) -> Mapping[bytes, bytes]:
        """Return the bytes of each requested page (never ZERO_ID); raise if one is missing."""


def page_id(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def encode_page(level: int, entries: bytes) -> tuple[bytes, bytes | None]:
    """Returns (page ID, page bytes); an all-zero page gives (ZERO_ID, None)."""
    count, rest = divmod(len(entries), fmt.ID_SIZE)
    if rest or not 0 < count <= fmt.PAGE_FANOUT or not 0 <= level < fmt.MAX_TREE_HEIGHT:
        raise ValueError(f"bad page: level {level}, {len(entries)} entry bytes")
    if entries.count(0) == len(entries):
        return fmt.ZERO_ID, None
    data = _PAGE_HEADER.pack(fmt.PAGE_MAGIC, fmt.HEADER_VERSION, level, count) + entries
    return page_id(data), data


@dataclass(frozen=True)
class Page:
    level: int
    entries: bytes  # count x 32-byte IDs

    @property
    def count(self) -> int:
        return len(self.entries) // fmt.ID_SIZE

    def entry(self, i: int) -> bytes:
        return self.entries[i * fmt.ID_SIZE:(i + 1) * fmt.ID_SIZE]

    def ids(self) -> Iterator[bytes]:
        for i in range(self.count):
            yield self.entry(i)


def decode_page(data: bytes, expected_id: bytes | None = None) -> Page:
    """Parse and check a page. With `expected_id`, its SHA-256 must match (IntegrityError)."""
    if expected_id is not None and page_id(data) != expected_id:
        raise IntegrityError(f"index page {expected_id.hex()[:16]}… has wrong content")
    if len(data) < fmt.PAGE_HEADER_SIZE:
        raise FormatError(f"index page truncated ({len(data)} bytes)")
    magic, version, level, count = _PAGE_HEADER.unpack_from(data)
    if magic != fmt.PAGE_MAGIC:
        raise FormatError(f"not an index page (magic {magic!r})")
    if version != fmt.HEADER_VERSION:
        raise FormatError(f"index page version {version} is not supported")
    if not 0 < count <= fmt.PAGE_FANOUT or level >= fmt.MAX_TREE_HEIGHT:
        raise FormatError(f"index page has invalid count {count} or level {level}")
    if len(data) != fmt.PAGE_HEADER_SIZE + count * fmt.ID_SIZE:
        raise FormatError(f"index page length {len(data)} does not match its {count} entries")
    return Page(level=level, entries=data[fmt.PAGE_HEADER_SIZE:])


@dataclass(frozen=True)
class Geometry:
    """Shape of a volume's tree: which page holds which block."""

    size: int  # volume size in bytes
    block_size: int

    def __post_init__(self) -> None:
        bs = self.block_size
        if not fmt.MIN_BLOCK_SIZE <= bs <= fmt.MAX_BLOCK_SIZE or bs & (bs - 1):
            raise FormatError(f"block size {bs} is not a power of two in "
                              f"[{fmt.MIN_BLOCK_SIZE}, {fmt.MAX_BLOCK_SIZE}]")
        if self.size < 0:
            raise FormatError(f"negative volume size {self.size}")
        if self.height >= fmt.MAX_TREE_HEIGHT:
            raise FormatError(f"volume of {self.size} bytes is too large for the index")

    @property
    def blocks(self) -> int:
        return -(-self.size // self.block_size)

    @property
    def height(self) -> int:
        """Level of the root page: 0 when one leaf holds every block."""
        h, span = 0, fmt.PAGE_FANOUT
        while span < self.blocks:
            h, span = h + 1, span * fmt.PAGE_FANOUT
        return h

    def block_length(self, index: int) -> int:
        """Bytes in block `index` (the last block of a volume may be short)."""
        return min(self.block_size, self.size - index * self.block_size)

    def span(self, level: int) -> int:
        """Blocks covered by one page at `level`."""
        return int(fmt.PAGE_FANOUT ** (level + 1))

    def entries_in(self, level: int, index: int) -> int:
        """Entries in page `index` of `level` (the last page of a level may be short)."""
        first_block = index * self.span(level)
        blocks = min(self.blocks - first_block, self.span(level))
        below = self.span(level - 1) if level else 1
        return -(-blocks // below)


def build(geometry: Geometry, block_ids: Iterable[bytes], sink: PageSink) -> bytes:
    """Build a whole tree from every block's ID, in order; returns the root ID. Streams:
    holds at most one page per level in memory."""
    page_bytes = fmt.PAGE_FANOUT * fmt.ID_SIZE
    height = geometry.height
    pending = [bytearray() for _ in range(height + 1)]
    root = fmt.ZERO_ID

    def push(level: int, entry: bytes) -> None:
        pending[level] += entry
        if len(pending[level]) == page_bytes:
            emit(level)

    def emit(level: int) -> None:
        nonlocal root
        pid, data = encode_page(level, bytes(pending[level]))
        pending[level].clear()
        if data is not None:
            sink(pid, data)
        if level == height:
            root = pid
        else:
            push(level + 1, pid)

    count = 0
    for block_id in block_ids:
        if len(block_id) != fmt.ID_SIZE:
            raise ValueError("block IDs are 32 bytes")
        count += 1
        push(0, block_id)
    if count != geometry.blocks:
        raise ValueError(f"{count} block IDs given for a volume of {geometry.blocks} blocks")
    for level in range(height + 1):
        if pending[level]:
            emit(level)
    return root


def _fetch(source: PageSource, wanted: dict[tuple[int, int], bytes], geometry: Geometry,
           ) -> dict[tuple[int, int], bytearray]:
    """Fetch and check the pages `wanted` maps (level, index) -> page ID; ZERO_ID pages
    become zero-filled entries. Every page must have the level and entry count the
    geometry says, so a hostile or broken server cannot reshape a volume."""
    ids = sorted({pid for pid in wanted.values() if pid != fmt.ZERO_ID})
    got = source.get_pages(ids) if ids else {}
    out: dict[tuple[int, int], bytearray] = {}
    for (level, index), pid in wanted.items():
        count = geometry.entries_in(level, index)
        if pid == fmt.ZERO_ID:
            out[level, index] = bytearray(count * fmt.ID_SIZE)
            continue
        if pid not in got:
            raise IntegrityError(f"index page {pid.hex()[:16]}… was not returned")
        page = decode_page(bytes(got[pid]), pid)
        if page.level != level or page.count != count:
            raise IntegrityError(
                f"index page {pid.hex()[:16]}… is level {page.level} with {page.count} "
                f"entries where level {level} with {count} entries belongs")
        out[level, index] = bytearray(page.entries)
    return out


def _entry(entries: bytearray, i: int) -> bytes:
    return bytes(entries[i * fmt.ID_SIZE:(i + 1) * fmt.ID_SIZE])


def update(geometry: Geometry, source: PageSource, root: bytes,
           changes: Mapping[int, bytes], sink: PageSink) -> bytes:
    """Apply `changes` (block index -> new chunk ID) to the tree at `root`; returns the new
    root. Reads only the pages on the changed blocks' paths (one batch per level) and
    writes only those: the cost is O(changed blocks x height), whatever the volume size."""
    if not changes:
        return root
    if min(changes) < 0 or max(changes) >= geometry.blocks:
        raise ValueError("changed block index outside the volume")
    height, fanout = geometry.height, fmt.PAGE_FANOUT
    # Top-down: find and fetch every page on a changed path.
    pages: dict[tuple[int, int], bytearray] = {}
    wanted = {(height, 0): root}
    for level in range(height, -1, -1):
        pages.update(_fetch(source, wanted, geometry))
        if level == 0:
            break
        below = geometry.span(level - 1)
        children = sorted({block // below for block in changes})
        wanted = {(level - 1, child): _entry(pages[level, child // fanout], child % fanout)
                  for child in children}
    # Bottom-up: patch leaves, then each parent with its children's new IDs.
    for block, chunk_id in changes.items():
        if len(chunk_id) != fmt.ID_SIZE:
            raise ValueError("chunk IDs are 32 bytes")
        leaf = pages[0, block // fanout]
        i = block % fanout
        leaf[i * fmt.ID_SIZE:(i + 1) * fmt.ID_SIZE] = chunk_id
    new_root = root
    for level in range(height + 1):
        for (page_level, index), entries in sorted(pages.items()):
            if page_level != level:
                continue
            pid, data = encode_page(level, bytes(entries))
            if data is not None:
                sink(pid, data)
            if level == height:
                new_root = pid
            else:
                parent = pages[level + 1, index // fanout]
                i = index % fanout
                parent[i * fmt.ID_SIZE:(i + 1) * fmt.ID_SIZE] = pid
    return new_root


def iter_leaves(geometry: Geometry, source: PageSource, root: bytes,
                batch: int = 64, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield (leaf index, entry bytes) for every leaf page in order, fetching `batch`
    pages per request. Depth first, a batch at a time: memory is at most `batch` pages
    and their children's IDs per level, whatever the volume's size (level by level, one
    ID per leaf took 661 MiB before the first leaf of an empty 16 TiB volume).

    With `start` (a block index), only the leaves holding blocks at or after it: the
    descent enters only the subtrees that hold such blocks, so no page that covers
    blocks before `start` alone is fetched (a resume needs none of them, and one lost
    on the server since must not stop it). The first leaf may hold blocks before
    `start` too: it is yielded whole. A `start` at or past the end yields nothing."""
    if start < 0:
        raise ValueError(f"start block {start} is negative")
    if start >= geometry.blocks:
        return
    yield from _leaves_under(geometry, source, geometry.height, [(0, root)], batch, start)


def _leaves_under(geometry: Geometry, source: PageSource, level: int,
                  pages: list[tuple[int, bytes]], batch: int,
                  start: int) -> Iterator[tuple[int, bytes]]:
    """The leaves under `pages` ((index, page ID) at `level`, in order) that hold blocks
    at or after block `start`."""
    for first in range(0, len(pages), batch):
        part = pages[first:first + batch]
        try:
            got = _fetch(source, {(level, i): pid for i, pid in part}, geometry)
        except (IntegrityError, NotFoundError):
            if len(part) == 1:
                raise
            # One page lost or damaged fails the batch: page by page, the pages before
            # it still yield their leaves, and the error comes at the page at fault.
            for one in part:
                yield from _leaves_under(geometry, source, level, [one], batch, start)
            continue
        if level == 0:
            for i, _ in part:
                yield i, bytes(got[0, i])
            continue
        # A child covers blocks [c * span, (c + 1) * span): skip those that end by `start`.
        span = geometry.span(level - 1)
        children = [(c, _entry(got[level, i], j))
                    for i, _ in part for j in range(len(got[level, i]) // fmt.ID_SIZE)
                    if (c := i * fmt.PAGE_FANOUT + j) * span + span > start]
        del got
        yield from _leaves_under(geometry, source, level - 1, children, batch, start)


def iter_block_ids(geometry: Geometry, source: PageSource, root: bytes,
                   start: int = 0) -> Iterator[tuple[int, bytes]]:
    """Yield (block index, chunk ID) for every block of the volume from block `start` on,
    in order, reading only the index pages that cover those blocks (iter_leaves)."""
    for leaf, entries in iter_leaves(geometry, source, root, start=start):
        first = leaf * fmt.PAGE_FANOUT
        for j in range(max(0, start - first), len(entries) // fmt.ID_SIZE):
            yield first + j, entries[j * fmt.ID_SIZE:(j + 1) * fmt.ID_SIZE]


class MemoryPages:
    """A PageSource and PageSink over a dict: for tests, the demo and local caches."""

    def __init__(self) -> None:
        self.pages: dict[bytes, bytes] = {}

    def __call__(self, pid: bytes, data: bytes) -> None:
        self.pages[pid] = data

    def get_pages(self, page_ids: list[bytes]) -> Mapping[bytes, bytes]:
        return {pid: self.pages[pid] for pid in page_ids if pid in self.pages}
