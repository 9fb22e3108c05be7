"""Manifest versions: writers write version 2 (keyed BLAKE3 chunk IDs), readers read 1 and
2 and refuse anything else by name; a manifest cannot declare a scheme its IDs are not in."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from cdpcore import format as fmt
from cdpcore.crypto import BlobCodec, ChunkIds, KeySet
from cdpcore.errors import FormatError
from cdpcore.layout import Disk, Layout
from cdpcore.manifest import Manifest, VolumeRecord

CODEC = BlobCodec(KeySet.from_master(bytes(range(64))))
HMAC_CODEC = CODEC.with_chunk_ids(ChunkIds.HMAC_SHA256)


def manifest(version: int = fmt.MANIFEST_VERSION) -> Manifest:
    return Manifest(host="h", point_id="0" * 32, created=1.0, version=version,
                    layout=Layout(hostname="h", boot_mode="bios",
                                  disks=[Disk(name="vda", size=1 << 20, table="none")]),
                    volumes=[VolumeRecord("vda", 1 << 20, 4096, "0" * 64, 0)])


def test_writers_write_version_2_with_blake3_ids() -> None:
    written = manifest()
    assert (written.version, written.chunk_ids) == (2, ChunkIds.BLAKE3)
    opened = Manifest.open(CODEC, "h", "0" * 32, written.seal(CODEC))
    assert (opened.version, opened.chunk_ids) == (2, ChunkIds.BLAKE3)


def test_version_1_points_declare_hmac_ids() -> None:
    opened = Manifest.open(CODEC, "h", "0" * 32, manifest(1).seal(HMAC_CODEC))
    assert (opened.version, opened.chunk_ids) == (1, ChunkIds.HMAC_SHA256)


@pytest.mark.parametrize("version", [0, 3, True, 2.0, "2"])
def test_other_versions_are_refused_by_name(version: object) -> None:
    doc = manifest().to_json() | {"version": version}
    blob = CODEC.seal(fmt.BLOB_KIND_MANIFEST, manifest().aad(), json.dumps(doc).encode())
    with pytest.raises(FormatError, match=f"manifest version {version} is not supported"):
        Manifest.open(CODEC, "h", "0" * 32, blob)


def test_a_manifest_cannot_declare_another_scheme_than_its_codec_makes() -> None:
    with pytest.raises(ValueError, match="declares blake3 chunk IDs, but the codec makes "
                                         "hmac-sha256 IDs"):
        manifest().seal(HMAC_CODEC)
    with pytest.raises(ValueError, match="declares hmac-sha256"):
        manifest(1).seal(CODEC)


@pytest.mark.parametrize("point_id", ["a" * 32 + "\n", "A" * 32, "a" * 31, "a" * 33])
def test_point_ids_are_exactly_32_lower_case_hex_digits(point_id: str) -> None:
    """re.match's $ also matches before a final newline: "<32 hex>\\n" was accepted (as a
    commit's parent, by the server)."""
    from cdpcore.manifest import check_point_id
    with pytest.raises(FormatError, match=r"^invalid point ID .*: 32 lower-case hex "
                                          r"digits expected$"):
        check_point_id(point_id)
    assert check_point_id("a" * 32) == "a" * 32


def test_deeply_nested_manifest_is_a_format_error() -> None:
    """A holder of the key (a compromised agent) could seal a manifest that made every
    reader raise RecursionError instead of FormatError."""
    body = b'{"version":2,"layout":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    blob = CODEC.seal(fmt.BLOB_KIND_MANIFEST, manifest().aad(), body)
    with pytest.raises(FormatError, match=r"^malformed manifest: nested too deeply$"):
        Manifest.open(CODEC, "h", "0" * 32, blob)


def _called_deeper(frames: int, fn: Callable[[], Any]) -> Any:
    return fn() if frames == 0 else _called_deeper(frames - 1, fn)


def test_volume_record_names_and_roots_must_be_strings() -> None:
    """A volume record's name and root were taken as str(anything): a list nested as
    deeply as the JSON parser allows raised RecursionError out of from_json when called
    a few frames deeper than the parse, and a long list became a name of megabytes that
    went whole into the error message."""
    depth = 2000
    while True:
        try:
            deep = json.loads("[" * depth + "]" * depth)
            break
        except RecursionError:
            depth -= 1
    good = {"name": "vda", "size": 1 << 20, "block_size": 4096, "root": "0" * 64, "height": 0}
    assert VolumeRecord.from_json(good) == VolumeRecord("vda", 1 << 20, 4096, "0" * 64, 0)
    for bad in ({"name": deep}, {"root": deep}, {"name": list(range(1_000_000))},
                {"name": 5}):
        with pytest.raises(FormatError, match=r"^malformed volume record: name .* must be "
                                              r"strings$") as caught:
            _called_deeper(30, lambda bad=bad: VolumeRecord.from_json(good | bad))
        assert len(str(caught.value)) < 300
