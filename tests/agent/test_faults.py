"""Faults: wrong passphrase, server down (retried, never half-committed), a failed run's
dirty state answered by a full scan."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from cdpcore.errors import ConnectionFailed, WrongKeyError
from hotcopy.backup import BackupOptions, backup
from hotcopy.errors import SourceError
from hotcopy.keysetup import establish_key
from hotcopy.transfer import RetryPolicy
from hotcopy.verify import iter_volume, open_point, verify_point

from .conftest import Agent, write_at
from .images import MiB

BS = 16 * 1024


def test_key_is_created_once_and_a_wrong_passphrase_is_refused(agent: Agent) -> None:
    asked: list[bool] = []

    def passphrase(new: bool) -> str:
        asked.append(new)
        return "correct horse"

    master, created = establish_key(agent.remote, agent.host, passphrase)
    assert created and asked == [True]  # asked as for a new key: the CLI confirms it
    again, created_again = establish_key(agent.remote, agent.host, passphrase)
    assert (again, created_again) == (master, False) and asked == [True, False]
    with pytest.raises(WrongKeyError, match="wrong passphrase"):
        establish_key(agent.remote, agent.host, lambda new: "wrong horse")


def test_server_down_at_the_start_commits_nothing_and_keeps_the_chain(
        agent: Agent, cdp_server, gpt_image: Path) -> None:  # type: ignore[no-untyped-def]
    first = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir)
    write_at(gpt_image, 9 * MiB, b"\x33" * BS)
    cdp_server.kill()
    quick = BackupOptions(retry=RetryPolicy(attempts=2, first_delay=0.05))
    with pytest.raises(ConnectionFailed, match="cannot reach the CDP server"):
        backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir,
               options=quick)
    cdp_server.restart()
    assert [p.point_id for p in agent.remote.points(agent.host)] == [first.point_id]
    info = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir)
    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    # Nothing local was touched before the server was found down: still incremental.
    assert manifest.tracking["full_scan"] is False and info.parent == first.point_id
    assert (info.stats.new_chunks, info.stats.changed_bytes) == (1, BS)


def test_server_lost_mid_point_commits_nothing_and_the_next_run_rescans(
        agent: Agent, cdp_server, gpt_image: Path) -> None:  # type: ignore[no-untyped-def]
    first = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir)
    write_at(gpt_image, 9 * MiB, b"\x33" * BS)
    quick = BackupOptions(retry=RetryPolicy(attempts=2, first_delay=0.05))
    with pytest.raises(ConnectionFailed):
        backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir,
               options=quick, progress=lambda _: cdp_server.kill())
    cdp_server.restart()
    assert [p.point_id for p in agent.remote.points(agent.host)] == [first.point_id]
    info = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir)
    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    # The failed run had begun rewriting local state: the chain is in doubt.
    assert manifest.tracking["full_scan"] is True and info.parent == first.point_id
    assert info.stats.new_chunks == 1
    assert verify_point(agent.remote, agent.host, agent.codec, info.point_id).ok


def test_a_point_taken_while_the_server_restarts_is_retried_to_completion(
        agent: Agent, cdp_server, gpt_image: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir)
    write_at(gpt_image, 10 * MiB, b"\x44" * BS)
    copy = shutil.copy(gpt_image, tmp_path / "copy.img")
    cdp_server.kill()
    restarter = threading.Timer(1.0, cdp_server.restart)
    restarter.start()
    try:
        info = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir,
                      options=BackupOptions(retry=RetryPolicy(attempts=12, first_delay=0.5,
                                                              max_delay=2.0)))
    finally:
        restarter.join()
    assert len(agent.remote.points(agent.host)) == 2
    manifest = open_point(agent.remote, agent.host, agent.codec, info.point_id)
    vol = next(v for v in manifest.volumes if v.name.endswith(":p2"))
    with open(copy, "rb") as f:
        f.seek(5 * MiB)
        assert b"".join(iter_volume(agent.remote, agent.host, agent.codec, vol)) == f.read(vol.size)


def test_a_source_that_vanishes_mid_read_fails_clearly_and_commits_nothing(
        agent: Agent, gpt_image: Path) -> None:
    first = backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir)

    def shrink(_: int) -> None:
        # The disk goes away under the reader after its first segment.
        os.truncate(gpt_image, 2 * MiB)

    with pytest.raises(SourceError, match="shrank or vanished while being read"):
        backup(agent.remote, agent.host, agent.codec, [str(gpt_image)], agent.state_dir,
               progress=shrink)
    assert [p.point_id for p in agent.remote.points(agent.host)] == [first.point_id]
    assert not list(gpt_image.parent.glob(".cdpsnap-*"))
