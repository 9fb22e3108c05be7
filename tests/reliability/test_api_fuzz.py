"""Schema-driven fuzzing of the HTTP API: schemathesis against the real server process's
own /openapi.json, with the admin and an agent token, bounded in examples and time.
Zero 5xx answers, zero crashes (the server still answers /health and logged no
unhandled error)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from cdpcore.api import API_PREFIX, Role

from .conftest import iterations, record
from .pointkit import build, new_codec, push

SCHEMATHESIS = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "schemathesis"


def run_schemathesis(server: Any, token: str, tmp: Path, name: str, seed: int) -> dict[str, Any]:
    ndjson = tmp / f"{name}.ndjson"
    argv = [str(SCHEMATHESIS), "run", f"{server.url}/openapi.json",
            "--checks", "not_a_server_error", "-H", f"Authorization: Bearer {token}",
            "--tls-verify", str(server.ca_path), "--max-examples", str(20 * iterations(1)),
            "--seed", str(seed), "--max-time", str(15 * iterations(1)), "--workers", "1",
            "--request-timeout", "30", "--report", "ndjson", "--report-ndjson-path",
            str(ndjson), "--no-shrink", "--suppress-health-check", "all"]
    # cwd: schemathesis keeps a cache in ./.schemathesis, which belongs in the test's tmp
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp,
                         env={**os.environ, "NO_COLOR": "1"})
    cases = statuses = 0
    server_errors = []
    for line in ndjson.read_text().splitlines() if ndjson.exists() else []:
        for status in _statuses(json.loads(line)):
            statuses += 1
            if status >= 500:
                server_errors.append(status)
        cases += line.count('"ScenarioFinished"')
    return {"exit": out.returncode, "output": out.stdout[-4000:] + out.stderr[-2000:],
            "responses": statuses, "server_errors": server_errors, "scenarios": cases}


def _statuses(doc: Any) -> list[int]:
    """Every HTTP status found in one ndjson event."""
    found = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "status_code" and isinstance(value, int):
                found.append(value)
            else:
                found += _statuses(value)
    elif isinstance(doc, list):
        for item in doc:
            found += _statuses(item)
    return found


def server_failures(log: str) -> tuple[int, list[str]]:
    """(5xx answers, last line of each unhandled error's traceback) from the JSON log."""
    answers, errors = 0, []
    for line in log.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("msg") == "request" and int(doc.get("status", 0)) >= 500:
            answers += 1
        if doc.get("msg") == "unhandled error":
            errors.append(str(doc.get("exc", "")).strip().splitlines()[-1])
    return answers, errors


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(cdp_server: Any, tmp_path: Path,
                                            rng: Any) -> None:
    tokens = cdp_server.add_host("fuzzed")
    agent = cdp_server.client(tokens[Role.agent])
    push(agent, build(new_codec(), "fuzzed", {"sda": os.urandom(4 * 4096)}))
    runs = {}
    for name, token in (("admin", cdp_server.admin_token), ("agent", tokens[Role.agent])):
        runs[name] = run_schemathesis(cdp_server, token, tmp_path, name, rng.randrange(2**31))
    health = requests.get(f"{cdp_server.url}{API_PREFIX}/health",
                          verify=str(cdp_server.ca_path), timeout=10)
    answers, errors = server_failures(cdp_server.log())
    # each defect found so far (an unbounded `limit`, a non-ASCII manifest, a point time
    # past year 9999) is fixed and has a regression test below
    unknown = sorted(set(errors))
    record("api_fuzz", **{f"{n}_responses": r["responses"] for n, r in runs.items()},
           **{f"{n}_5xx": len(r["server_errors"]) for n, r in runs.items()},
           unhandled_errors=unknown)
    for name, result in runs.items():
        assert result["responses"] > 50, f"{name}: schemathesis sent almost nothing:\n" \
            + result["output"]
    # no unhandled error, every 5xx accounted for, and the server still serves
    assert unknown == [], unknown
    assert answers == len(errors)
    assert sum(len(r["server_errors"]) for r in runs.values()) <= answers
    assert health.json()["status"] == "ok"


def _raw(server: Any, method: str, path: str, token: str, **kw: Any) -> requests.Response:
    return requests.request(method, server.url + API_PREFIX + path,
                            headers={"Authorization": f"Bearer {token}"},
                            verify=str(server.ca_path), timeout=30, **kw)


@pytest.mark.parametrize("query", ["limit=99999999999999999999",
                                   "limit=9223372036854775808"])
def test_huge_point_query_is_a_client_error(cdp_server: Any, query: str) -> None:
    cdp_server.add_host("q")
    resp = _raw(cdp_server, "GET", f"/hosts/q/points?{query}", cdp_server.admin_token)
    assert resp.status_code == 422, resp.text


@pytest.mark.parametrize("grace", ["inf", "Infinity", "1e999", "nan", "-1"])
def test_non_finite_gc_grace_is_a_client_error(cdp_server: Any, grace: str) -> None:
    """grace=inf used to run gc with a cutoff of -inf: 200, a report, nothing freed."""
    resp = _raw(cdp_server, "POST", f"/admin/gc?grace={grace}", cdp_server.admin_token)
    assert resp.status_code == 422, resp.text
    assert "grace" in resp.json()["detail"]


def test_non_ascii_manifest_is_a_client_error(cdp_server: Any) -> None:
    cdp_server.add_host("m")
    body = {"point_id": "a" * 32, "created": 1.0, "volumes": [], "manifest": "é"}
    resp = _raw(cdp_server, "POST", "/hosts/m/points", cdp_server.admin_token, json=body)
    assert resp.status_code == 422, resp.text


@pytest.mark.parametrize("created", [1e300, -1.0])
def test_out_of_range_point_time_is_a_client_error(cdp_server: Any, created: float) -> None:
    # found by schemathesis: a creation time past year 9999 reached retention's calendar
    # buckets and answered 500 (OverflowError: timestamp out of range for platform time_t)
    cdp_server.add_host("t")
    body = {"point_id": "a" * 32, "created": created, "volumes": [], "manifest": "AA=="}
    resp = _raw(cdp_server, "POST", "/hosts/t/points", cdp_server.admin_token, json=body)
    assert resp.status_code == 422, resp.text
    assert "created" in resp.text
