"""Format compatibility: the committed repositories tests/fixtures/repo-vN, written by
format version N, must read back exactly. If this fails, a change broke old recovery
points."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from cdpcore import format as fmt
from cdpcore import index as ix
from cdpcore.crypto import BlobCodec, ChunkIds, KeySet
from cdpcore.errors import IntegrityError
from cdpcore.keys import WrappedKey
from cdpcore.manifest import Manifest, VolumeRecord

FIXTURES = Path(__file__).parent.parent / "fixtures"
REPO = FIXTURES / "repo-v1"
#: Every format version's fixture and the chunk-ID scheme its points declare.
VERSIONS = {1: ChunkIds.HMAC_SHA256, 2: ChunkIds.BLAKE3}
POINTS = ["00000000000000000000000000000001", "00000000000000000000000000000002"]


class DirPages:
    def __init__(self, repo: Path = REPO) -> None:
        self.repo = repo

    def get_pages(self, page_ids: list[bytes]) -> Mapping[bytes, bytes]:
        return {p: (self.repo / "pages" / p.hex()).read_bytes() for p in page_ids}


def open_repo(repo: Path = REPO) -> tuple[BlobCodec, dict[str, object]]:
    expected = json.loads((repo / "expected.json").read_text())
    master = WrappedKey.loads((repo / "key.json").read_text()).unwrap(expected["passphrase"])
    return BlobCodec(KeySet.from_master(master)), expected


def open_point(codec: BlobCodec, point_id: str, repo: Path = REPO) -> Manifest:
    doc = json.loads((repo / "points" / f"{point_id}.json").read_text())
    volumes = [VolumeRecord.from_json(v) for v in doc["volumes"]]
    return Manifest.open(codec, "fixture", point_id, base64.b64decode(doc["manifest"]),
                         volumes=volumes)


def restore(codec: BlobCodec, point_id: str, repo: Path = REPO, *,
            pages: ix.PageSource | None = None,
            chunk: Callable[[bytes], bytes] | None = None) -> tuple[Manifest, bytes]:
    """As every reader does: the chunks are opened in the scheme the manifest declares.
    Pages and chunk blobs come from the fixture's files unless `pages` and `chunk` (ID ->
    blob) name another store of the same objects."""
    manifest = open_point(codec, point_id, repo)
    chunks = codec.with_chunk_ids(manifest.chunk_ids)
    (volume,) = manifest.volumes
    geometry = volume.geometry
    blob = chunk or (lambda chunk_id: (repo / "chunks" / chunk_id.hex()).read_bytes())
    out = bytearray()
    for block, chunk_id in ix.iter_block_ids(geometry, pages or DirPages(repo), volume.root_id):
        if chunk_id == fmt.ZERO_ID:
            out += bytes(geometry.block_length(block))
        else:
            out += chunks.open_block(chunk_id, blob(chunk_id))
    return manifest, bytes(out)


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("point_id", POINTS)
def test_fixture_points_read_back_exactly(version: int, point_id: str) -> None:
    repo = FIXTURES / f"repo-v{version}"
    codec, expected = open_repo(repo)
    manifest, data = restore(codec, point_id, repo)
    assert (manifest.version, manifest.chunk_ids) == (version, VERSIONS[version])
    assert hashlib.sha256(data).hexdigest() == expected["volume_sha256"][point_id]  # type: ignore[index]
    part = manifest.layout.disk("vda").partition(1)
    assert part.guid == "9d3a1c2b-1111-4222-8333-944455556666"
    assert part.filesystem is not None and part.filesystem.uuid == "1b2c3d4e-aaaa-4bbb-8ccc-ddddeeeeffff"
    assert manifest.layout.disk("vda").disk_guid == "5b1f4a8e-7c1d-4c55-9a3e-0e4a0b8c1d01"


def test_second_point_shares_unchanged_pages_and_chunks() -> None:
    codec, _ = open_repo()
    first, _ = restore(codec, "00000000000000000000000000000001")
    second, _ = restore(codec, "00000000000000000000000000000002")
    assert second.parent == first.point_id
    assert first.volumes[0].root != second.volumes[0].root
    ids = [dict(ix.iter_block_ids(m.volumes[0].geometry, DirPages(), m.volumes[0].root_id))
           for m in (first, second)]
    # block 3 was edited and block 9 zeroed; every other block is the same stored chunk
    assert {b for b in ids[0] if ids[0][b] != ids[1][b]} == {3, 9}
    assert ids[1][9] == fmt.ZERO_ID
    assert len({cid for cid in ids[0].values() if cid != fmt.ZERO_ID}) > 1


def test_manifest_cannot_be_moved_to_another_point() -> None:
    codec, _ = open_repo()
    doc = json.loads((REPO / "points" / "00000000000000000000000000000001.json").read_text())
    with pytest.raises(IntegrityError, match="failed authentication"):
        Manifest.open(codec, "fixture", "00000000000000000000000000000002",
                      base64.b64decode(doc["manifest"]))


def test_server_cannot_swap_volume_roots() -> None:
    codec, _ = open_repo()
    one = json.loads((REPO / "points" / "00000000000000000000000000000001.json").read_text())
    two = json.loads((REPO / "points" / "00000000000000000000000000000002.json").read_text())
    with pytest.raises(IntegrityError, match="differ from the sealed manifest"):
        Manifest.open(codec, "fixture", "00000000000000000000000000000001",
                      base64.b64decode(one["manifest"]),
                      volumes=[VolumeRecord.from_json(v) for v in two["volumes"]])


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_chunks_open_only_in_the_scheme_their_point_declares(version: int) -> None:
    """A reader that ignored the manifest version would refuse every chunk (or, for a
    scheme that did not check IDs, accept any): the other scheme's codec must fail."""
    repo = FIXTURES / f"repo-v{version}"
    codec, _ = open_repo(repo)
    manifest = open_point(codec, POINTS[0], repo)
    (volume,) = manifest.volumes
    chunk_id = next(c for _, c in ix.iter_block_ids(volume.geometry, DirPages(repo),
                                                     volume.root_id) if c != fmt.ZERO_ID)
    blob = (repo / "chunks" / chunk_id.hex()).read_bytes()
    (other,) = set(ChunkIds) - {manifest.chunk_ids}
    with pytest.raises(IntegrityError, match="decrypts to data with another ID"):
        codec.with_chunk_ids(other).open_block(chunk_id, blob)
