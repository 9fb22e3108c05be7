"""Smoke run of the side-by-side benchmark harness (issue #9) on a tiny image: every tool
runs once, the table and the JSON document come out, and every restore is byte-exact.
No timing assertions: speed is what bench/ measures, not what tests check."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import peers, workload
from bench.measure import cached_bytes, evict

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def peer_versions() -> dict[str, str]:
    try:
        return peers.ensure_installed()
    except peers.MissingTool as exc:
        pytest.skip(f"restic/borg unavailable: {exc}")


def test_workload_is_reproducible_and_change_is_exact(tmp_path: Path) -> None:
    a = workload.build_image(tmp_path / "a.img", 32 * workload.MiB, seed=3)
    b = workload.build_image(tmp_path / "b.img", 32 * workload.MiB, seed=3)
    assert a.sha256 == b.sha256 == workload.sha256_file(tmp_path / "b.img")
    writes = workload.plan_change(tmp_path / "a.img", a, scattered=40,
                                  sequential=3 * workload.PAGE)
    workload.apply_change(tmp_path / "b.img", writes)
    diff = workload.diff_images(tmp_path / "a.img", tmp_path / "b.img")
    # 40 scattered pages and 3 log pages, each rewritten with new content.
    assert diff.blocks == 43
    assert 40 * workload.PAGE < diff.bytes <= 43 * workload.PAGE
    runs = workload.data_runs(tmp_path / "a.img", a.files)

    def inside(offset: int, rels: list[str]) -> bool:
        return any(start <= offset < start + n for rel in rels for start, n in runs[rel])

    assert all(inside(w.offset, a.files) for w in writes[:40])
    assert all(inside(w.offset, [workload.LOG_FILE]) for w in writes[40:])
    assert len({w.offset for w in writes}) == 43


def test_diff_counts_single_bytes(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(bytes(3 * workload.PAGE))
    (tmp_path / "y").write_bytes(bytes(workload.PAGE) + b"\1\0\2" + bytes(2 * workload.PAGE - 3))
    assert workload.diff_images(tmp_path / "x", tmp_path / "y") == workload.Diff(2, 1)


def test_smoke_run(tmp_path: Path, peer_versions: dict[str, str]) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "32M", "--runs", "1", "--series-size", "32M",
         "--series-points", "1", "--empty-size", "64M", "--cache", "evict",
         "--work", str(tmp_path / "work"), "--doc", "", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    tools = {"cdp-scan", "restic", "borg", "limit"}
    assert tools <= set(doc["raw"])
    assert {t: doc["restore_checks"][t] for t in tools} == dict.fromkeys(tools, "yes")
    for tool in tools - {"limit"}:
        assert doc["raw"][tool]["growth_bytes"][0] > 0
    assert set(doc["series"]["tools"]) >= {"cdp-scan", "restic", "borg"}
    assert doc["empty_point"]["volume_size"] == 64 * workload.MiB
    assert set(doc["raw"]["limit"]) >= {"restore_floor_s", "start_floor_s"}
    assert doc["errors"] == []
    # Each incremental of ours again, taken by one resident agent process.
    assert len(doc["raw"]["cdp-tracking"]["incr_resident_s"]) == 1
    assert len(doc["raw"]["cdp-scan"]["incr_resident_s"]) == 1
    assert "| Incremental backup time, resident agent (as `cdp-agent run`) |" in proc.stdout
    assert "| Restore floor: the non-zero 16 KiB blocks written from memory, fsynced |" \
        in proc.stdout
    assert "| Full backup time |" in proc.stdout
    assert "| Target (issue #9) |" in proc.stdout
    assert doc["versions"] == peer_versions



def test_evict_drops_files_from_the_page_cache(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    files = [tmp_path / "image", tmp_path / "repo" / "pack"]
    for f in files:
        f.write_bytes(workload.keystream(f.name, 4 * workload.MiB))
        f.read_bytes()
    assert [cached_bytes(f) for f in files] == [4 * workload.MiB] * 2
    assert evict(files[0], tmp_path / "repo") == 2
    assert [cached_bytes(f) for f in files] == [0, 0]


def test_the_resident_incrementals_are_judged_against_restics_incremental() -> None:
    from bench.report import Stat, targets

    summary = {"restic": {"incr_s": Stat.of([10.0])},
               "cdp-tracking": {"incr_s": Stat.of([2.0]), "incr_resident_s": Stat.of([0.4])},
               "cdp-scan": {"incr_s": Stat.of([3.0]), "incr_resident_s": Stat.of([2.4])}}
    got = {t.name: (t.measured, t.met) for t in targets(summary, None)}
    assert got["incremental, change tracking"] == (0.2, False)
    assert got["incremental, change tracking, resident agent"] == (0.04, True)
    assert got["incremental, scan"] == (0.3, False)
    assert got["incremental, scan, resident agent"] == (0.24, True)


def test_cpu_split_of_a_point_runs(tmp_path: Path) -> None:
    """bench.cpusplit (perf) on a tiny image: the point is taken and the split printed."""
    out = subprocess.run([sys.executable, "-m", "bench.cpusplit", "--size", "64M", "--work",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"tracked point: \d+\.\d\d s wall; CPU sampled at 1999 Hz \(seconds\):",
                        lines[0])
    assert lines[-1] == f"perf data: {tmp_path}/cpusplit/*.perf (perf report -i FILE)"
    assert (tmp_path / "cpusplit/server.perf").stat().st_size > 0
    assert (tmp_path / "cpusplit/agent.perf").stat().st_size > 0


def test_timeline_of_a_full_and_a_tracked_point_runs(tmp_path: Path) -> None:
    """bench.timeline on a tiny image: both points are taken and their rows printed."""
    out = subprocess.run([sys.executable, "-m", "bench.timeline", "--size", "64M", "--work",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    heads = [line for line in out.stdout.splitlines() if not line.startswith(" ")]
    assert [h.split(":")[0] for h in heads] == ["full backup", "tracked incremental"]
    for head in heads:
        assert re.fullmatch(r"[a-z ]+: \d+\.\d\d s wall, CPU \d+\.\d\d s agent and "
                            r"\d+\.\d\d s server \(\d+ CPUs; disk \S+\)", head)
    row = re.compile(r"  +\d+\.\d\d +\d\.\d\d +\d+\.\d\d +\d+ +\d+")
    assert any(row.fullmatch(line) for line in out.stdout.splitlines())


def test_readahead_reads_the_same_blocks_both_ways(tmp_path: Path) -> None:
    """bench.readahead on a tiny image: each way sees every non-zero block of the image,
    counted here from the image itself."""
    out = subprocess.run([sys.executable, "-m", "bench.readahead", "--size", "64M", "--work",
                          str(tmp_path), "--workers", "2", "--rounds", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    data = (tmp_path / "base-67108864-9.img").read_bytes()
    blocks = sum(1 for at in range(0, len(data), 16384) if data[at:at + 16384].strip(b"\0"))
    assert [line.split(":")[0] for line in out.stdout.splitlines()] == [
        "round 1 serial", "round 1 ahead ", "median serial", "median ahead "]
    for line in out.stdout.splitlines()[:2]:
        assert re.fullmatch(rf"round 1 \w+ *: \d+\.\d\d s \({blocks} non-zero blocks\)", line)
