"""Retention rules (pure) and prune over the API, with pins."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from cdp_server.datastore import Datastore
from cdp_server.jobs import prune
from cdp_server.retention import Candidate, select
from cdpcore.api import API_PREFIX, Retention, Role
from cdpcore.errors import NotFoundError

from .points import BS, build_point, commit_direct, new_codec, push


def _t(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


POINTS = [Candidate(f"p{i:02d}", t, False) for i, t in enumerate([
    _t("2026-01-01 10:00"), _t("2026-01-01 10:05"), _t("2026-01-01 11:00"),
    _t("2026-01-02 09:00"), _t("2026-01-09 09:00"), _t("2026-02-01 00:00"),
    _t("2026-02-01 00:30"), _t("2026-02-01 00:31")])]


def test_no_rules_keep_everything() -> None:
    assert select(POINTS, Retention()) == {p.point_id for p in POINTS}


@pytest.mark.parametrize(("rules", "kept"), [
    (Retention(keep_last=2), {"p06", "p07"}),
    (Retention(keep_hourly=3), {"p07", "p04", "p03"}),
    (Retention(keep_daily=3), {"p07", "p04", "p03"}),
    (Retention(keep_monthly=2), {"p07", "p04"}),
    (Retention(keep_weekly=2), {"p07", "p04"}),
    (Retention(keep_minutely=2), {"p07", "p06"}),
    (Retention(keep_last=1, keep_monthly=5), {"p07", "p04"}),
    (Retention(keep_daily=10), {"p07", "p04", "p03", "p02"}),
])
def test_rules(rules: Retention, kept: set[str]) -> None:
    assert select(POINTS, rules) == kept


def test_pins_are_always_kept() -> None:
    pinned = [*POINTS[:-1], Candidate("p00x", _t("2025-06-01 00:00"), True), POINTS[-1]]
    assert select(pinned, Retention(keep_last=1)) == {"p07", "p00x"}


def test_prune_over_the_api(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    admin = cdp_server.admin()
    codec = new_codec()
    ids = []
    for c in POINTS:
        built = build_point(codec, "web1", {"vda": os.urandom(2 * BS)}, created=c.committed)
        push(agent, "web1", built)
        ids.append(built.point_id)
    # no rules: nothing pruned
    assert admin.prune("web1").removed == []
    admin.set_retention("web1", Retention(keep_last=2))
    assert admin.get_retention("web1") == Retention(keep_last=2)
    admin.pin("web1", ids[0])
    with pytest.raises(NotFoundError):
        admin.pin("web1", "0" * 32)
    report = admin.prune("web1")
    assert sorted(report.removed) == sorted(ids[1:6])
    assert sorted(report.kept) == sorted([ids[0], ids[6], ids[7]])
    listed = agent.points("web1")
    assert [p.point_id for p in listed] == [ids[0], ids[6], ids[7]]
    assert [p.pinned for p in listed] == [True, False, False]
    admin.unpin("web1", ids[0])
    assert sorted(admin.prune().removed) == [ids[0]]
    admin.delete_point("web1", ids[6])
    assert [p.point_id for p in agent.points("web1")] == [ids[7]]
    with pytest.raises(NotFoundError):
        admin.delete_point("web1", ids[6])


def test_points_dated_in_the_future_do_not_outrank_later_points(cdp_server) -> None:  # type: ignore[no-untyped-def]
    """A compromised agent may date its points as it likes; retention ranks a point by
    its arrival (the server's commit time), so junk dated in year 9999 cannot make the
    real points that come after it look older than itself."""
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    admin = cdp_server.admin()
    codec = new_codec()
    junk = push(agent, "web1", build_point(codec, "web1", {"vda": os.urandom(BS)},
                                           created=253402300799.0)).point_id
    real = [push(agent, "web1", build_point(codec, "web1", {"vda": os.urandom(BS)},
                                            created=time.time())).point_id for _ in range(2)]
    admin.set_retention("web1", Retention(keep_last=2))
    assert admin.prune("web1").removed == [junk]
    assert sorted(p.point_id for p in agent.points("web1")) == sorted(real)


def test_prune_by_the_cli_is_seen_by_the_running_server(cdp_server) -> None:  # type: ignore[no-untyped-def]
    """The server keeps its point listing rendered; a change made by another process
    (the CLI on the same datastore) must show at once."""
    import subprocess
    import sys

    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    codec = new_codec()
    ids = [push(agent, "web1", build_point(codec, "web1", {"vda": os.urandom(BS)},
                                           created=1000.0 + i)).point_id for i in range(3)]
    assert [p.point_id for p in agent.points("web1")] == ids
    subprocess.run([sys.executable, "-m", "cdp_server", "retention", "set", "web1",
                    "--keep-last", "1", "--data", str(cdp_server.data_dir)], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "cdp_server", "prune", "--data",
                    str(cdp_server.data_dir)], check=True, capture_output=True)
    assert [p.point_id for p in agent.points("web1")] == ids[2:]


def test_a_pin_that_lands_while_prune_decides_keeps_the_point(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Prune lists the points, then deletes those retention does not keep: a pin that
    lands in between (the API answered "pinned") must keep its point."""
    ds, _ = Datastore.init(tmp_path / "ds")
    ds.add_host("web1")
    codec = new_codec()
    ids = []
    for created in (1000.0, 2000.0):
        built = build_point(codec, "web1", {"vda": os.urandom(2 * BS)}, created=created)
        commit_direct(ds, "web1", built)
        ids.append(built.point_id)
    ds.catalog.set_retention("web1", Retention(keep_last=1))
    decide = ds.catalog.retention

    def pinned_meanwhile(host: str) -> Retention:
        ds.catalog.set_pinned(host, ids[0], True)  # after the listing, before the delete
        return decide(host)

    ds.catalog.retention = pinned_meanwhile  # type: ignore[method-assign]
    report = prune(ds, "web1")
    assert (report.removed, sorted(report.kept)) == ([], sorted(ids))
    assert [(r.point_id, r.pinned) for r in ds.catalog.point_rows("web1")] == [
        (ids[0], True), (ids[1], False)]
    # A pin that comes after prune deleted its point says so (the API answers 404).
    assert ds.catalog.set_pinned("web1", "0" * 32, True) is False
    assert ds.catalog.set_pinned("web1", ids[1], True) is True


def test_decoys_dated_just_after_real_points_do_not_get_them_pruned(
        tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A compromised agent reads the listing and commits a throwaway point dated 1 s after
    each real one. Retention places points by the server's commit time, so the decoys,
    all arriving today, share today's bucket and cannot displace the real point of each
    earlier day."""
    import cdp_server.commit as commit_module

    ds, _ = Datastore.init(tmp_path / "ds")
    ds.add_host("web1")
    codec = new_codec()
    now, day = time.time(), 86400.0
    clock = SimpleNamespace(time=lambda: now)
    monkeypatch.setattr(commit_module, "time", clock)  # the server's clock, at commits only
    real = []
    for d in range(5, 0, -1):  # one real point a day, committed when it was made
        clock.time = lambda d=d: now - d * day
        built = build_point(codec, "web1", {"vda": os.urandom(2 * BS)},
                            created=now - d * day)
        real.append(commit_direct(ds, "web1", built))
    clock.time = lambda: now
    for point in real:
        decoy = build_point(codec, "web1", {"vda": os.urandom(BS)}, created=point.created + 1)
        commit_direct(ds, "web1", decoy)
    ds.catalog.set_retention("web1", Retention(keep_daily=7))
    report = prune(ds, "web1")
    assert {p.point_id for p in real} <= set(report.kept)
    assert len(report.removed) == 4  # the decoys, but the newest: today's one point
    assert {r.point_id for r in ds.catalog.point_rows("web1")} >= {p.point_id for p in real}


def test_a_misspelt_rule_is_refused_not_dropped(cdp_server) -> None:  # type: ignore[no-untyped-def]
    """`{"keep_lats": 3}` was stored as no rules at all (keep everything), the misspelt
    field dropped without a word: now 422 naming it, and the rules stay as they were."""
    cdp_server.add_host("web1")
    admin = cdp_server.admin()
    admin.set_retention("web1", Retention(keep_last=5))
    for body, misspelt in (({"keep_lats": 3}, "keep_lats"),
                           ({"keep_last": 3, "keepDaily": 7}, "keepDaily")):
        resp = requests.put(cdp_server.url + API_PREFIX + "/hosts/web1/retention", json=body,
                            headers={"Authorization": f"Bearer {cdp_server.admin_token}"},
                            verify=str(cdp_server.ca_path), timeout=30)
        assert resp.status_code == 422, resp.text
        assert misspelt in resp.json()["detail"]
    assert admin.get_retention("web1") == Retention(keep_last=5)


def _commit_by_clock(ds: Datastore, monkeypatch: pytest.MonkeyPatch,
                     clock: list[float]) -> list[str]:
    """One point of web1 committed at each of the server clock's readings `clock`."""
    import cdp_server.commit as commit_module

    ds.add_host("web1")
    codec, ids = new_codec(), []
    for i, reading in enumerate(clock):
        monkeypatch.setattr(commit_module, "time", SimpleNamespace(time=lambda r=reading: r))
        built = build_point(codec, "web1", {"vda": os.urandom(BS)}, created=time.time() + i)
        commit_direct(ds, "web1", built)
        ids.append(built.point_id)
    return ids


def test_a_point_committed_while_the_server_clock_ran_ahead_does_not_stay_newest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's clock ran a year ahead for one commit and was put right. Ranked by
    the clock, that point stayed the newest for the year: with keep_last 1 the only one
    kept, every point after it pruned. Ranked by commit order, it ages like the others."""
    now = time.time()
    ds, _ = Datastore.init(tmp_path / "ds")
    ids = _commit_by_clock(ds, monkeypatch, [now + 365 * 86400, now, now + 1, now + 2])
    ds.catalog.set_retention("web1", Retention(keep_last=1))
    assert prune(ds, "web1").removed == ids[:3]
    assert [r.point_id for r in ds.catalog.point_rows("web1")] == [ids[3]]


def test_points_committed_while_the_server_clock_ran_behind_are_not_pruned_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that booted with its clock in 1970 (no RTC, NTP not yet in step) commits
    the host's newest points with the oldest times: keep_last keeps them all the same."""
    now = time.time()
    ds, _ = Datastore.init(tmp_path / "ds")
    ids = _commit_by_clock(ds, monkeypatch, [now, now + 1, 60.0, 61.0])
    ds.catalog.set_retention("web1", Retention(keep_last=2))
    assert sorted(prune(ds, "web1").kept) == sorted(ids[2:])


def test_a_catalog_from_before_commit_order_numbers_its_points_by_commit_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog made before points had an arrival number (and one an older server
    committed into since, leaving it empty) gets them when opened, after the numbered
    ones, in the order of the commit times; new points follow."""
    now = time.time()
    ds, _ = Datastore.init(tmp_path / "ds")
    ids = _commit_by_clock(ds, monkeypatch, [now + 5, now + 1, now + 3])
    with ds.catalog.write() as db:
        db.execute("UPDATE points SET arrival = NULL WHERE point_id != ?", (ids[0],))
    reopened = Datastore.open(tmp_path / "ds")
    by_arrival = sorted(reopened.catalog.point_rows("web1"), key=lambda r: r.arrival)
    assert [(r.point_id, r.arrival) for r in by_arrival] == [
        (ids[0], 1), (ids[1], 2), (ids[2], 3)]
