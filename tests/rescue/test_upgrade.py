"""A host backed up in format version 1 (HMAC-SHA256 chunk IDs) by an older agent moves to
version 2: the new agent drops the old local state, takes a full scan that shares no chunk
with the version 1 point, and both points still verify and read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdpcore import format as fmt
from cdpcore.crypto import is_zero
from hotcopy.backup import backup
from hotcopy.capture import capture
from hotcopy.verify import open_point, verify_point

from .pointmaker import make_point
from .test_restore import make_source

BS = fmt.DEFAULT_BLOCK_SIZE


def distinct_nonzero_blocks(source: Path) -> int:
    _, specs = capture([str(source)], "web1")
    seen: set[bytes] = set()
    with open(source, "rb") as f:
        for spec in specs:
            for at in range(spec.offset, spec.offset + spec.size, BS):
                f.seek(at)
                block = f.read(min(BS, spec.offset + spec.size - at))
                if not is_zero(block):
                    seen.add(block)
    return len(seen)


def test_a_version_1_host_moves_to_version_2(repo_host: dict[str, Any], tmp_path: Path) -> None:
    agent, codec = repo_host["agent"], repo_host["codec"]
    source = tmp_path / "vda.img"
    make_source(source, "gpt")
    old = make_point(agent, "web1", codec, [str(source)], version=1)
    # What the version 1 agent left: its state document and a fingerprint file.
    state = tmp_path / "state" / "web1"
    (state / "ids").mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"version": 1, "point_id": old.point_id}))
    fingerprints = state / "ids" / "vda.img_p3.fp"
    fingerprints.write_bytes(bytes(4096))

    new = backup(agent, "web1", codec, [str(source)], tmp_path / "state", workers=2)

    assert new.parent == old.point_id
    manifest = open_point(agent, "web1", codec, new.point_id)
    assert manifest.version == 2 and manifest.tracking["full_scan"] is True
    # No chunk is shared with the version 1 point: every non-zero block went up again.
    assert new.stats.new_chunks == distinct_nonzero_blocks(source) > 0
    assert not fingerprints.exists()
    assert json.loads((state / "state.json").read_text())["version"] == 3  # agent state
    for point_id in (old.point_id, new.point_id):
        result = verify_point(agent, "web1", codec, point_id)
        assert result.ok and result.chunks_checked > 0, point_id
