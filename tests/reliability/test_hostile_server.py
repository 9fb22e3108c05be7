"""The rescue client against a hostile server: every tampered answer is refused with a
specific error, and no unverified byte reaches the target disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdpcore.api import Role
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import new_master_key, recovery_key
from hotcopy.backup import backup

from .conftest import record
from .hostile import TAMPERS, HostileServer

MIB = 1024 * 1024
BS = 16 * 1024
REPO = Path(__file__).resolve().parents[2]
#: What the rescue CLI must say (stderr) for each tampering, and its exit code.
EXPECTED = {
    "volume-size": (4, "differ from the sealed manifest"),
    "volume-name": (3, "invalid volume name"),
    "chunk-contents": (4, "nothing unverified was written"),
    "page-contents": (4, "wrong content"),
    "record-length": (3, "more than the"),
    "point-not-json": (3, "the server's answer is not JSON (Content-Type"),
    "point-nested": (3, "the server's answer is nested too deeply"),
    "listing-nested": (3, "/points: the server's answer is not what the API defines: "
                          "'Invalid JSON: recursion limit exceeded"),
}


@pytest.fixture
def protected(cdp_server: Any, tmp_path: Path) -> dict[str, Any]:
    tokens = cdp_server.add_host("victim")
    master = new_master_key()
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(4 * MIB))
    backup(cdp_server.client(tokens[Role.agent]), "victim",
           BlobCodec(KeySet.from_master(master)), [str(image)], tmp_path / "state")
    (tmp_path / "key").write_text(recovery_key(master))
    return {"tokens": tokens, "image": image, "keyfile": tmp_path / "key"}


@pytest.mark.parametrize("kind", sorted(TAMPERS))
def test_rescue_refuses_a_hostile_server(cdp_server: Any, server_cert: dict[str, str],
                                         protected: dict[str, Any], tmp_path: Path,
                                         kind: str) -> None:
    hostile = HostileServer(cdp_server.url, str(cdp_server.ca_path), server_cert["cert"],
                            server_cert["key"], TAMPERS[kind])
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.truncate(4 * MIB)
    try:
        out = subprocess.run([
            sys.executable, "-m", "rescue", "restore", "--server", hostile.url,
            "--ca", str(cdp_server.ca_path), "--token", protected["tokens"][Role.restore],
            "--host", "victim", "--map", f"disk.img={target}", "--passphrase-file",
            str(protected["keyfile"]), "--yes", "--workers", "1", "--state-dir",
            str(tmp_path / "state-r")], cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        hostile.close()
    code, message = EXPECTED[kind]
    record("hostile_server", kind=kind, exit_code=out.returncode,
           message=out.stderr.strip().splitlines()[-1][:300] if out.stderr.strip() else "")
    assert hostile.calls > 0
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.returncode == code, out.stderr[-3000:]
    assert message in out.stderr, out.stderr[-3000:]
    # Whatever was written is verified data: each block is the source's or untouched (zero).
    source, written = protected["image"].read_bytes(), target.read_bytes()
    for off in range(0, len(source), BS):
        block = written[off:off + BS]
        assert block == source[off:off + BS] or not any(block), f"unverified bytes at {off}"
    assert not Path("/etc/passwd.img").exists()
