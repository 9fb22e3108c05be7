"""Faults from the operator's point of view, through the real `rescue` command and a real
server: a chunk corrupted in the server's datastore, a wrong passphrase, an unknown host
and an unknown point. Each gets its exact message and exit code."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdpcore.api import Role
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import WrappedKey, new_master_key
from tests.server.stored import corrupt_object

from .pointmaker import make_point

MIB = 1024 * 1024
BLOCK = 16384
PASS = "correct horse"
#: The block whose chunk the tests corrupt (a whole-disk volume: offsets are disk offsets).
BAD_BLOCK = 700


@pytest.fixture
def setup(cdp_server: Any, tmp_path: Path) -> dict[str, Any]:
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    master = new_master_key()
    agent.put_key("web1", WrappedKey.create(master, PASS, n=2**10).to_json())
    codec = BlobCodec(KeySet.from_master(master))
    source = tmp_path / "vda.img"
    source.write_bytes(bytes(MIB) + bytes(range(256)) * (31 * MIB // 256))  # 32 MiB
    with open(source, "r+b") as f:  # a distinct block, so its chunk belongs to it alone
        f.seek(BAD_BLOCK * BLOCK)
        f.write(hashlib.sha256(b"unique").digest() * (BLOCK // 32))
    point = make_point(agent, "web1", codec, [str(source)])
    (tmp_path / "pass").write_text(PASS + "\n")
    return {"codec": codec, "source": source, "point": point,
            "token": tokens[Role.restore], "server": cdp_server}


def rescue(setup: dict[str, Any], tmp_path: Path, *args: str,
           passphrase: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
    srv = setup["server"]
    passfile = tmp_path / "pass"
    if passphrase is not None:
        passfile = tmp_path / "otherpass"
        passfile.write_bytes(passphrase if isinstance(passphrase, bytes)
                             else passphrase.encode())
    secret = [] if args[0] == "points" else ["--passphrase-file", str(passfile)]
    return subprocess.run(
        [sys.executable, "-m", "rescue", *args, "--server", srv.url, "--ca", str(srv.ca_path),
         "--token", setup["token"], *secret],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


@pytest.mark.parametrize("keep_checksum", [False, True], ids=["server-detects", "client-detects"])
def test_corrupted_chunk_stops_volume_naming_range(setup: dict[str, Any], tmp_path: Path,
                                                   keep_checksum: bool) -> None:
    source: Path = setup["source"]
    bad = source.read_bytes()[BAD_BLOCK * BLOCK:(BAD_BLOCK + 1) * BLOCK]
    corrupt_object(setup["server"].data_dir, "chunks", setup["codec"].keys.chunk_id(bad),
                   keep_checksum=keep_checksum)
    target = tmp_path / "new.img"
    target.write_bytes(b"\xee" * (32 * MIB))
    proc = rescue(setup, tmp_path, "restore", "--host", "web1", "--map",
                  f"vda.img={target}", "--yes")
    assert proc.returncode == 4, proc.stderr
    first, last = BAD_BLOCK * BLOCK, (BAD_BLOCK + 1) * BLOCK - 1
    why = ("is missing or damaged on the server" if not keep_checksum
           else "failed verification: blob ")
    assert f"rescue: error: volume vda.img:whole: bytes {first}-{last} (chunk " in proc.stderr
    assert why in proc.stderr
    assert "the volume was stopped there and nothing unverified was written" in proc.stderr
    restored, original = target.read_bytes(), source.read_bytes()
    # The damaged block holds no garbage: the wiped target's zeros, never stale bytes.
    assert restored[first:last + 1] == bytes(BLOCK)
    assert restored[:first] == original[:first]
    # After it, a block is either restored (verified, by a batch already in flight) or
    # still zero: never anything else.
    for start in range(last + 1, len(original), BLOCK):
        assert restored[start:start + BLOCK] in (original[start:start + BLOCK], bytes(BLOCK))


def test_wrong_passphrase_exact_message(setup: dict[str, Any], tmp_path: Path) -> None:
    proc = rescue(setup, tmp_path, "points", "--host", "web1")
    assert proc.returncode == 0 and setup["point"].point_id in proc.stdout
    proc = rescue(setup, tmp_path, "plan", "--host", "web1", "--map", "vda.img=/dev/null",
                  passphrase="not it")
    assert (proc.returncode, proc.stderr) == (
        5, "rescue: error: wrong passphrase (or the key file was altered)\n")


def test_a_passphrase_file_not_in_utf8_is_named_not_a_traceback(
        setup: dict[str, Any], tmp_path: Path) -> None:
    proc = rescue(setup, tmp_path, "plan", "--host", "web1", "--map", "vda.img=/dev/null",
                  passphrase="café\n".encode("latin-1"))
    assert (proc.returncode, proc.stderr) == (
        5, "rescue: error: the passphrase is not UTF-8 text: it holds bytes of another "
           "encoding (a terminal, file or environment variable not in UTF-8?)\n")


def test_unknown_host_exact_message(setup: dict[str, Any], tmp_path: Path) -> None:
    proc = rescue(setup, tmp_path, "plan", "--host", "db9", "--map", "vda.img=/dev/null")
    assert (proc.returncode, proc.stderr) == (
        7, "rescue: error: unknown host 'db9': the server has no such host, or this token "
           "belongs to another host\n")


def test_unknown_point_exact_message(setup: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "t.img"
    target.write_bytes(bytes(32 * MIB))
    proc = rescue(setup, tmp_path, "plan", "--host", "web1", "--point", "0123abcd",
                  "--map", f"vda.img={target}")
    assert (proc.returncode, proc.stderr) == (
        7, "rescue: error: no recovery point of host 'web1' has an ID starting with "
           "'0123abcd'\n")
    proc = rescue(setup, tmp_path, "plan", "--host", "web1", "--point", "2001-01-01 10:00",
                  "--map", f"vda.img={target}")
    assert proc.returncode == 7
    assert proc.stderr.startswith("rescue: error: no recovery point of host 'web1' at or "
                                  "before 2001-01-01 10:00: the oldest is from ")


def test_verify_finds_a_changed_byte_on_the_target(setup: dict[str, Any],
                                                   tmp_path: Path) -> None:
    target = tmp_path / "new.img"
    target.write_bytes(bytes(32 * MIB))
    args = ("--host", "web1", "--map", f"vda.img={target}")
    assert rescue(setup, tmp_path, "restore", *args, "--yes").returncode == 0
    proc = rescue(setup, tmp_path, "verify", *args)
    assert proc.returncode == 0, proc.stderr
    assert "verified 1 volumes: every block matches point" in proc.stdout
    with open(target, "r+b") as f:  # one byte of block 1000 goes bad on the new disk
        f.seek(1000 * BLOCK + 5)
        f.write(b"\x01" if f.read(1) != b"\x01" else b"\x02")
    proc = rescue(setup, tmp_path, "verify", *args)
    assert proc.returncode == 4
    assert proc.stderr.endswith(
        f"rescue: error: read-back of volume vda.img:whole found 1 bad blocks at bytes "
        f"{1000 * BLOCK}-{1001 * BLOCK - 1}\n")
