"""The block index tree: build, incremental update, reading back, and its costs."""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdpcore import format as fmt
from cdpcore import index as ix
from cdpcore.errors import FormatError, IntegrityError

BS = fmt.DEFAULT_BLOCK_SIZE
F = fmt.PAGE_FANOUT


def fake_id(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()


def read_all(geometry: ix.Geometry, pages: ix.MemoryPages, root: bytes) -> list[bytes]:
    out = list(ix.iter_block_ids(geometry, pages, root))
    assert [i for i, _ in out] == list(range(geometry.blocks))
    return [bid for _, bid in out]


@pytest.mark.parametrize("blocks", [1, 2, F - 1, F, F + 1, F * F, F * F + 3])
def test_build_and_read_back(blocks: int) -> None:
    geometry = ix.Geometry(size=blocks * BS - 100, block_size=BS)
    ids = [fake_id(i) if i % 7 else fmt.ZERO_ID for i in range(geometry.blocks)]
    pages = ix.MemoryPages()
    root = ix.build(geometry, ids, pages)
    assert read_all(geometry, pages, root) == ids


def test_geometry() -> None:
    g = ix.Geometry(size=2**40, block_size=BS)
    assert g.blocks == 2**26 and g.height == 3
    assert ix.Geometry(size=F * BS, block_size=BS).height == 0
    assert ix.Geometry(size=F * BS + 1, block_size=BS).height == 1
    assert ix.Geometry(size=BS + 5, block_size=BS).block_length(1) == 5
    with pytest.raises(FormatError, match="not a power of two"):
        ix.Geometry(size=1, block_size=3000)


def test_empty_and_all_zero_volumes_store_nothing() -> None:
    pages = ix.MemoryPages()
    assert ix.build(ix.Geometry(size=0, block_size=BS), [], pages) == fmt.ZERO_ID
    g = ix.Geometry(size=10 * F * BS, block_size=BS)
    assert ix.build(g, [fmt.ZERO_ID] * g.blocks, pages) == fmt.ZERO_ID
    assert pages.pages == {}
    assert read_all(g, pages, fmt.ZERO_ID) == [fmt.ZERO_ID] * g.blocks


def test_unchanged_point_on_a_1_tib_volume_costs_nothing() -> None:
    g = ix.Geometry(size=2**40, block_size=BS)
    pages = ix.MemoryPages()
    # A sparse 1 TiB volume with a few blocks of data, changed in nothing.
    root = ix.update(g, pages, fmt.ZERO_ID, {0: fake_id(1), g.blocks - 1: fake_id(2)}, pages)
    before = dict(pages.pages)
    assert ix.update(g, pages, root, {}, pages) == root
    assert pages.pages == before
    # One changed block rewrites exactly one page per level: O(height), not O(size).
    new_pages = ix.MemoryPages()
    merged = ix.MemoryPages()
    merged.pages = dict(pages.pages)

    def sink(pid: bytes, data: bytes) -> None:
        new_pages(pid, data)
        merged(pid, data)

    ix.update(g, merged, root, {12345: fake_id(3)}, sink)
    assert len(new_pages.pages) == g.height + 1
    assert sum(len(d) for d in new_pages.pages.values()) <= (g.height + 1) * (
        fmt.PAGE_HEADER_SIZE + F * fmt.ID_SIZE)


@settings(max_examples=40, deadline=None)
@given(
    blocks=st.integers(min_value=1, max_value=3 * F + 5),
    changes=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 5)), max_size=40),
)
def test_update_equals_rebuild(blocks: int, changes: list[tuple[int, int]]) -> None:
    geometry = ix.Geometry(size=blocks * BS, block_size=BS)
    ids = [fake_id(i) if i % 3 else fmt.ZERO_ID for i in range(blocks)]
    pages = ix.MemoryPages()
    root = ix.build(geometry, ids, pages)
    delta = {}
    for block, value in changes:
        block %= blocks
        delta[block] = fmt.ZERO_ID if value == 0 else fake_id(10_000 + block * 7 + value)
        ids[block] = delta[block]
    new_root = ix.update(geometry, pages, root, delta, pages)
    assert new_root == ix.build(geometry, ids, ix.MemoryPages())
    assert read_all(geometry, pages, new_root) == ids


def test_page_checks() -> None:
    pid, data = ix.encode_page(0, fake_id(1) * 3)
    assert data is not None
    assert ix.decode_page(data, pid).count == 3
    with pytest.raises(IntegrityError, match="wrong content"):
        ix.decode_page(data[:-1] + b"\x00", pid)
    with pytest.raises(FormatError, match="not an index page"):
        ix.decode_page(b"XXXX" + data[4:])
    with pytest.raises(FormatError, match="does not match its 3 entries"):
        ix.decode_page(data[:-1])
    with pytest.raises(FormatError, match="truncated"):
        ix.decode_page(data[:5])
    with pytest.raises(FormatError, match="version 7"):
        ix.decode_page(data[:4] + b"\x07" + data[5:])


def test_hostile_page_source_cannot_reshape_a_volume() -> None:
    g = ix.Geometry(size=(F + 10) * BS, block_size=BS)
    pages = ix.MemoryPages()
    root = ix.build(g, [fake_id(i) for i in range(g.blocks)], pages)
    # A server answering a leaf where the root (level 1) belongs:
    leaf_id, leaf = ix.encode_page(0, fake_id(1) * 2)
    assert leaf is not None
    pages(leaf_id, leaf)
    with pytest.raises(IntegrityError, match="level 0 with 2 entries where level 1"):
        list(ix.iter_block_ids(g, pages, leaf_id))
    # ... or leaving a page out:
    del pages.pages[root]
    with pytest.raises(IntegrityError, match="was not returned"):
        list(ix.iter_block_ids(g, pages, root))


class _CountingPages(ix.MemoryPages):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[int] = []

    def get_pages(self, page_ids: list[bytes]) -> dict[bytes, bytes]:
        self.requests.append(len(page_ids))
        return dict(super().get_pages(page_ids))


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_leaves_are_read_in_order_in_batches_across_levels(batch: int) -> None:
    """Height 2, with an all-zero run of leaves, repeated IDs and a short last page."""
    g = ix.Geometry(size=(F * F + 3 * F + 5) * BS, block_size=BS)
    ids = [fmt.ZERO_ID if 2 * F <= i < 5 * F or i % 11 == 0 else fake_id(i % 1000)
           for i in range(g.blocks)]
    pages = _CountingPages()
    root = ix.build(g, ids, pages)
    leaves = list(ix.iter_leaves(g, pages, root, batch=batch))
    assert [i for i, _ in leaves] == list(range(-(-g.blocks // F)))
    assert b"".join(entries for _, entries in leaves) == b"".join(ids)
    assert max(pages.requests) <= batch


def test_reading_a_large_volume_holds_no_id_per_leaf() -> None:
    """The leaves were read level by level, holding one ID per leaf of the volume before
    the first one was yielded: 661 MiB for an empty 16 TiB volume (2^22 leaves of 16 KiB
    blocks), in a rescue system that runs from RAM, before its first block was written."""
    g = ix.Geometry(size=4 << 40, block_size=BS)  # 2^20 leaves
    tracemalloc.start()
    try:
        leaves = ix.iter_leaves(g, ix.MemoryPages(), fmt.ZERO_ID)
        assert next(leaves) == (0, bytes(F * fmt.ID_SIZE))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def _page_ranges(g: ix.Geometry, pages: ix.MemoryPages, root: bytes
                 ) -> list[tuple[bytes, int, int]]:
    """(page ID, first block, end block) of every stored page of the tree, by position."""
    out: list[tuple[bytes, int, int]] = []

    def walk(pid: bytes, level: int, index: int) -> None:
        if pid == fmt.ZERO_ID:
            return
        first = index * g.span(level)
        out.append((pid, first, min(first + g.span(level), g.blocks)))
        if level:
            page = ix.decode_page(pages.pages[pid], pid)
            for j in range(page.count):
                walk(page.entry(j), level - 1, index * F + j)

    walk(root, g.height, 0)
    return out


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("start", [0, 1, F - 1, F, F + 1, 2 * F, 5 * F + 7, F * F - 1,
                                   F * F, F * F + 1, F * F + 3 * F + 4])
def test_reading_from_a_start_fetches_no_page_wholly_before_it(start: int,
                                                                batch: int) -> None:
    """A resume reads the index from its checkpoint on: the pages that hold only blocks
    before `start` are never asked for (they may be lost on the server by then), every
    page that holds a block at or after it is, and is checked as from block 0."""
    g = ix.Geometry(size=(F * F + 3 * F + 5) * BS, block_size=BS)  # height 2
    ids = [fmt.ZERO_ID if 2 * F <= i < 5 * F or i % 11 == 0 else fake_id(i % 1000)
           for i in range(g.blocks)]
    pages = _CountingPages()
    root = ix.build(g, ids, pages)
    ranges = _page_ranges(g, pages, root)
    needed = {pid for pid, _, end in ranges if end > start}
    before = {pid for pid, _, end in ranges if end <= start} - needed
    for pid in before:  # lost on the server
        del pages.pages[pid]
    asked: list[bytes] = []
    get_pages = pages.get_pages

    def recording(page_ids: list[bytes]) -> dict[bytes, bytes]:
        asked.extend(page_ids)
        return get_pages(page_ids)

    pages.get_pages = recording  # type: ignore[method-assign]
    leaves = list(ix.iter_leaves(g, pages, root, batch=batch, start=start))
    assert [i for i, _ in leaves] == list(range(start // F, -(-g.blocks // F)))
    assert b"".join(e for _, e in leaves) == b"".join(ids[start // F * F:])
    assert set(asked) == needed and len(asked) == len(needed)
    assert max(pages.requests) <= batch
    assert list(ix.iter_block_ids(g, pages, root, start=start)) == \
        list(enumerate(ids))[start:]
    if before:  # the pages left out were needed from block 0: reading all fails
        with pytest.raises(IntegrityError, match="was not returned"):
            list(ix.iter_leaves(g, pages, root, batch=batch))


def test_reading_from_the_end_fetches_nothing_and_a_negative_start_is_refused() -> None:
    g = ix.Geometry(size=(F + 10) * BS, block_size=BS)
    pages = _CountingPages()
    root = ix.build(g, [fake_id(i) for i in range(g.blocks)], pages)
    for start in (g.blocks, g.blocks + 1):
        assert list(ix.iter_leaves(g, pages, root, start=start)) == []
        assert list(ix.iter_block_ids(g, pages, root, start=start)) == []
    assert pages.requests == []
    with pytest.raises(ValueError, match="start block -1 is negative"):
        list(ix.iter_leaves(g, pages, root, start=-1))
    # The last leaf alone, still checked: a reshaped one is refused from a start as well.
    assert list(ix.iter_block_ids(g, pages, root, start=g.blocks - 1)) == \
        [(g.blocks - 1, fake_id(g.blocks - 1))]
    leaf_id, leaf = ix.encode_page(0, fake_id(1) * 3)
    assert leaf is not None
    pages(leaf_id, leaf)
    root_page = ix.decode_page(pages.pages[root], root)
    bad_root_id, bad_root = ix.encode_page(1, root_page.entry(0) + leaf_id)
    assert bad_root is not None
    pages(bad_root_id, bad_root)
    with pytest.raises(IntegrityError, match="level 0 with 3 entries where level 0 with 10"):
        list(ix.iter_block_ids(g, pages, bad_root_id, start=F))
