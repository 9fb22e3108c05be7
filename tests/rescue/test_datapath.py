"""The restore's data path seen through its results: what the report says of a volume
that failed (its counts and how it was verified), what a rerun of `rescue verify` checks,
and a damaged index page. A real server and real points (the fixtures of test_restore and
test_faults)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cdpcore.api import ObjectKind
from cdpcore.errors import IntegrityError
from cdpcore.index import decode_page
from rescue import engine as engine_mod
from rescue.engine import Engine, ExecuteOptions
from rescue.plan import Plan
from rescue.repo import Repository
from rescue.verify import verify_volume
from tests.server.stored import corrupt_object, object_location

from .conftest import MIB, PASS
from .pointmaker import make_point
from .test_faults import BAD_BLOCK, BLOCK
from .test_restore import make_source, sh


def _engine(repo_host: dict[str, Any]) -> Engine:
    return Engine(Repository.open(repo_host["restore"], "web1", PASS))


def _report(state: Path) -> dict[str, Any]:
    return dict(json.loads(next(state.glob("rescue-web1-*.report.json")).read_text()))


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        old = f.read(1)
        f.seek(at)
        f.write(bytes([old[0] ^ 0x01]))


def test_a_failed_read_back_is_reported_as_failed_not_as_read_back(
        repo_host: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte goes bad on the target between the write and the read-back: the volume's
    report must say its read-back failed, not that it was verified by reading back. Run
    again, the restore writes the volume again: resuming skipped it as written and failed
    the same read-back on every rerun."""
    source, target, state = tmp_path / "vda.img", tmp_path / "new.img", tmp_path / "st"
    source.write_bytes(os.urandom(8 * MIB))  # a whole-disk volume: no table
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(source)])
    sh("truncate", "-s", str(8 * MIB), str(target))
    eng = _engine(repo_host)
    plan = eng.plan("latest", {"vda.img": str(target)}, verify="read-back")

    def disk_rots(*args: Any, **kw: Any) -> None:
        _flip(target, 3 * MIB + 7)
        verify_volume(*args, **kw)

    monkeypatch.setattr(engine_mod, "verify_volume", disk_rots)
    with pytest.raises(IntegrityError, match="the resume state is discarded"):
        eng.execute(plan, ExecuteOptions(state_dir=str(state)))
    vol = _report(state)["volumes"][0]
    assert vol["verified"] == "failed"
    assert vol["error"] == (f"read-back of volume vda.img:whole found 1 bad blocks at bytes "
                            f"{3 * MIB}-{3 * MIB + BLOCK - 1}")
    monkeypatch.setattr(engine_mod, "verify_volume", verify_volume)  # the disk is replaced
    assert eng.execute(plan, ExecuteOptions(state_dir=str(state))).ok
    assert _report(state)["volumes"][0]["verified"] == "read-back"
    assert target.read_bytes() == source.read_bytes()


def test_a_volume_stopped_by_a_damaged_block_reports_what_it_wrote(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """The blocks before a damaged one are written: the report counts them (it said 0)."""
    source, target, state = tmp_path / "vda.img", tmp_path / "new.img", tmp_path / "st"
    data = bytearray(os.urandom(16 * MIB))
    data[MIB:2 * MIB] = bytes(MIB)  # zero blocks before the damaged one: zeroed, not written
    source.write_bytes(data)
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(source)])
    bad = bytes(data[BAD_BLOCK * BLOCK:(BAD_BLOCK + 1) * BLOCK])
    corrupt_object(repo_host["server"].data_dir, "chunks", repo_host["codec"].keys.chunk_id(bad),
                   keep_checksum=True)
    sh("truncate", "-s", str(16 * MIB), str(target))
    eng = _engine(repo_host)
    plan = eng.plan("latest", {"vda.img": str(target)})
    with pytest.raises(IntegrityError):
        eng.execute(plan, ExecuteOptions(state_dir=str(state)))
    vol = _report(state)["volumes"][0]
    assert vol["verified"] == "failed"
    # Batches are taken in volume order up to the damaged block: exactly what is before it.
    assert (vol["written"], vol["zeroed"]) == (BAD_BLOCK * BLOCK - MIB, MIB)
    assert vol["resumed"] == 0


def _verify_plan(eng: Engine, target: Path) -> Plan:
    """What `rescue verify` executes: the read-back checks alone."""
    plan = eng.plan("latest", {"vda.img": str(target)}, verify="read-back")
    plan.actions = [a for a in plan.actions if a.type == "verify"]
    return plan


def test_verify_again_reads_every_volume_again(repo_host: dict[str, Any],
                                               tmp_path: Path) -> None:
    """A check that failed left a state behind; the next check must not take the volumes
    that passed then as still good: the target may have changed since."""
    source, target, state = tmp_path / "vda.img", tmp_path / "new.img", tmp_path / "st"
    make_source(source, "gpt")
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(source)])
    sh("truncate", "-s", str(64 * MIB), str(target))
    eng = _engine(repo_host)
    eng.execute(eng.plan("latest", {"vda.img": str(target)}), ExecuteOptions(
        state_dir=str(state)))
    root = 13 * MIB + MIB + 5  # in partition 3 (root), the last volume checked
    esp = 2048 * 512 + 4096 + 5  # in partition 1 (the ESP), checked before it
    _flip(target, root)
    with pytest.raises(IntegrityError, match=r"read-back of volume vda\.img:p3"):
        eng.execute(_verify_plan(eng, target), ExecuteOptions(state_dir=str(state)))
    _flip(target, root)  # repaired, and now the ESP goes bad
    _flip(target, esp)
    with pytest.raises(IntegrityError, match=r"read-back of volume vda\.img:p1"):
        eng.execute(_verify_plan(eng, target), ExecuteOptions(state_dir=str(state)))



def test_a_damaged_index_page_stops_its_volume_only_naming_it(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """A leaf page of the index lost on the server: the blocks it lists cannot be known.
    Like a damaged chunk, it stops its volume only, naming the volume and the bytes."""
    source, target, state = tmp_path / "vda.img", tmp_path / "new.img", tmp_path / "st"
    make_source(source, "gpt")
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(source)])
    sh("truncate", "-s", str(64 * MIB), str(target))
    eng = _engine(repo_host)
    plan = eng.plan("latest", {"vda.img": str(target)})
    p1 = next(v for v in plan.volumes if v.name == "vda.img:p1")  # 8 MiB: two leaves
    root = repo_host["restore"].fetch("web1", ObjectKind.pages, [p1.root_id])[p1.root_id]
    leaf = decode_page(root).entry(0)  # blocks 0-255 (256-511 are zeros: no page)
    path, offset, length = object_location(repo_host["server"].data_dir, "pages", leaf)
    with open(path, "r+b") as f:
        f.seek(offset + length // 2)
        f.write(b"\xff")
    with pytest.raises(IntegrityError) as err:
        eng.execute(plan, ExecuteOptions(state_dir=str(state)))
    assert str(err.value).startswith(f"volume vda.img:p1: bytes 0-{8 * MIB - 1} are not "
                                     "restored: their index is missing or damaged on the "
                                     "server (")
    assert leaf.hex()[:16] in str(err.value)
    vols = {v["volume"]: v for v in _report(state)["volumes"]}
    assert vols["vda.img:p1"]["verified"] == "failed"
    assert vols["vda.img:p3"]["error"] is None  # the volume after it: restored
    restored, original = target.read_bytes(), source.read_bytes()
    p3 = 13 * MIB
    assert restored[p3:] == original[p3:]
