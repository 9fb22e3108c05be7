"""kill -9 during uploads and commits, then restart: every committed point is complete,
nothing uncommitted is visible, and no half-written pack survives."""

from __future__ import annotations

import dataclasses
import os
import random
import sqlite3
import threading
import time

import pytest

from cdpcore.api import Role
from cdpcore.errors import CdpError
from tests.conftest import _free_port

from .points import BS, build_point, new_codec, push, restore


def _pack_files(data_dir) -> set[str]:  # type: ignore[no-untyped-def]
    root = data_dir / "objects"
    return {p.relative_to(root).as_posix() for p in (root / "packs").rglob("*.pack")}


def test_kill_during_uploads_and_commits(cdp_server) -> None:  # type: ignore[no-untyped-def]
    tokens = cdp_server.add_host("web1")
    codec = new_codec()
    rng = random.Random(7)
    acknowledged: dict[str, dict[str, bytes]] = {}
    attempted: dict[str, dict[str, bytes]] = {}
    never_sent: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        client = cdp_server.client(tokens[Role.agent], retries=0, timeout=10)
        while not stop.is_set():
            vols = {"vda": os.urandom(rng.randrange(50, 700) * BS)}
            built = build_point(codec, "web1", vols)
            never_sent.append(built.point_id)
            try:
                push(client, "web1", built)
            except CdpError:
                attempted[built.point_id] = vols
                time.sleep(0.05)
                continue
            acknowledged[built.point_id] = vols

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            time.sleep(rng.uniform(0.3, 1.5))
            cdp_server.kill()
            time.sleep(0.2)
            cdp_server.restart()
    finally:
        stop.set()
        thread.join()
    cdp_server.kill()
    cdp_server.restart()

    reader = cdp_server.client(tokens[Role.restore])
    listed = {p.point_id for p in reader.points("web1")}
    assert acknowledged, "no point was acknowledged: the test did not exercise commits"
    assert attempted, "no push failed: the kills did not hit the writer"
    assert set(acknowledged) <= listed
    # a listed point was acknowledged, or its commit was in flight at the kill
    assert listed <= set(acknowledged) | set(attempted)
    for pid in listed:
        vols = acknowledged.get(pid) or attempted[pid]
        assert restore(reader, codec, "web1", pid) == vols
    report = cdp_server.admin().verify()
    assert report.damaged_chunks == report.missing_chunks == report.damaged_points == []
    # no pack file the catalog does not know, and no pending pack
    db = sqlite3.connect(cdp_server.data_dir / "catalog.sqlite")
    known = {n for (n,) in db.execute("SELECT name FROM packs WHERE state = 'done'")}
    assert db.execute("SELECT count(*) FROM packs WHERE state = 'pending'").fetchone() == (0,)
    assert _pack_files(cdp_server.data_dir) == known
    assert not list((cdp_server.data_dir / "objects" / "tmp").iterdir())
    unsent = set(never_sent) - set(acknowledged) - set(attempted)
    assert not unsent & listed


def test_a_second_server_on_the_datastore_is_refused_and_a_killed_one_blocks_nothing(
        cdp_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Start-up recovery deletes pending packs, and a running server's uploads leave some
    pending: a second server on the same datastore must not start at all. The lock dies
    with its process, so a server killed by a crash does not stand in the way of its
    restart."""
    packs = _pack_files(cdp_server.data_dir)
    second = dataclasses.replace(cdp_server, port=_free_port(), proc=None,
                                 log_path=tmp_path / "second.log")
    second.url = f"https://127.0.0.1:{second.port}"
    try:
        with pytest.raises(RuntimeError, match="exited with 13") as err:
            second.start()
        assert (f"cdp-server: error: another `cdp-server serve` serves "
                f"{cdp_server.data_dir} (it holds {cdp_server.data_dir}/serve.lock): one "
                "server per datastore; stop it first") in str(err.value)
        assert cdp_server.admin().health().status == "ok"
        assert _pack_files(cdp_server.data_dir) == packs

        cdp_server.kill()
        second.start()
        assert second.admin().health().status == "ok"
    finally:
        second.kill()  # also when a second server started where it must not
