"""`cdp-agent run` for months: a point every interval in one process, with the sources
changing between points (images grown, shrunk, removed, added) and the server going away
and coming back."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cdpcore.api import PointInfo
from cdpcore.errors import ConnectionFailed
from cdpcore.keys import recovery_key
from hotcopy import cli, transfer
from hotcopy.backup import BackupOptions, backup
from hotcopy.config import AgentConfig
from hotcopy.keysetup import establish_key
from hotcopy.state import StateDir
from hotcopy.transfer import RetryPolicy
from hotcopy.verify import iter_volume, open_point

from .conftest import Agent, run_in_process, write_at
from .images import MiB


def _point(agent: Agent, sources: list[Path], options: BackupOptions | None = None
           ) -> PointInfo:
    return backup(agent.remote, agent.host, agent.codec, [str(s) for s in sources],
                  agent.state_dir, workers=2, options=options)


def _volumes(agent: Agent, point_id: str) -> dict[str, bytes]:
    """Each volume of the point, read back through the server, by name."""
    manifest = open_point(agent.remote, agent.host, agent.codec, point_id)
    return {v.name: b"".join(iter_volume(agent.remote, agent.host, agent.codec, v))
            for v in manifest.volumes}


def test_images_grown_shrunk_removed_and_added_between_points(agent: Agent,
                                                              tmp_path: Path) -> None:
    """Each point holds the sources as they are at it, byte for byte; the state directory
    keeps the ID files of the current volumes only, and no snapshot copy stays behind."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    a, b = imgs / "a.img", imgs / "b.img"
    a.write_bytes(os.urandom(3 * MiB))
    b.write_bytes(os.urandom(2 * MiB + 5000))
    store = StateDir(agent.state_dir, agent.host)
    _point(agent, [a, b])
    with open(a, "ab") as f:  # grown
        f.write(os.urandom(MiB + 123))
    p = _point(agent, [a, b])
    assert _volumes(agent, p.point_id) == {"a.img:whole": a.read_bytes(),
                                           "b.img:whole": b.read_bytes()}
    os.truncate(a, 2 * MiB - 7)  # shrunk
    write_at(b, 4096, os.urandom(100))
    p = _point(agent, [a, b])
    assert _volumes(agent, p.point_id) == {"a.img:whole": a.read_bytes(),
                                           "b.img:whole": b.read_bytes()}
    c = imgs / "c.img"
    c.write_bytes(os.urandom(MiB))
    p = _point(agent, [b, c])  # a removed, c added
    assert _volumes(agent, p.point_id) == {"b.img:whole": b.read_bytes(),
                                           "c.img:whole": c.read_bytes()}
    _point(agent, [b, c])
    ids = sorted(x.name for x in (store.dir / "ids").iterdir())
    assert ids == sorted(store.ids_path(n).name for n in store.load().volumes)
    assert len(ids) == 2
    assert sorted(os.listdir(imgs)) == ["a.img", "b.img", "c.img"]  # no snapshot left


def test_a_server_down_for_several_ticks_then_back(agent: Agent, cdp_server,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    """Ticks failing while the server is down leave nothing behind: the point after it is
    back is an incremental one chained to the last committed point."""
    a = tmp_path / "a.img"
    a.write_bytes(os.urandom(2 * MiB))
    first = _point(agent, [a])
    cdp_server.stop()
    opts = BackupOptions(retry=RetryPolicy(attempts=1))
    for _ in range(2):
        write_at(a, 8192, os.urandom(10))
        with pytest.raises(ConnectionFailed):
            _point(agent, [a], opts)
    cdp_server.start()
    back = _point(agent, [a])
    assert back.parent == first.point_id
    assert open_point(agent.remote, agent.host, agent.codec, back.point_id).tracking[
        "full_scan"] is False
    assert [p.point_id for p in agent.remote.points(agent.host)] == [first.point_id,
                                                                     back.point_id]


def test_run_prints_each_point_as_one_json_line(agent: Agent, cdp_server,  # type: ignore[no-untyped-def]
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd `run`'s stdout goes to the journal line by line, as its JSON-line logs
    do: a point printed as an indented document was some 17 journal entries a minute, none
    of them JSON, for months. One line per point, the point's JSON."""
    master, _ = establish_key(agent.remote, agent.host, lambda new: "s3cret")
    image = tmp_path / "a.img"
    image.write_bytes(os.urandom(MiB))
    conf = AgentConfig(server=cdp_server.url, token=agent.token, host=agent.host,
                       recovery_key=recovery_key(master), ca=str(cdp_server.ca_path),
                       state_dir=str(agent.state_dir), sources=[str(image)], nice=0,
                       io_class="none")
    one_point = cli._one_point
    points = 0

    def two_points(*args: Any, **kwargs: Any) -> None:
        nonlocal points
        one_point(*args, **kwargs)
        points += 1
        if points == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(transfer, "wait", lambda seconds: not transfer.stopping())
    result = run_in_process(monkeypatch, conf, two_points)
    assert result.exit_code == 0
    listed = sorted(agent.remote.points(agent.host), key=lambda p: p.created)
    assert len(result.stdout.splitlines()) == len(listed) == 2
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        p.model_dump(mode="json") for p in listed]
