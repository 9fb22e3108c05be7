"""Fixtures of the agent tests: a host on the real CDP server (the `cdp_server` fixture of
tests/conftest.py), a repository key, and partitioned disk images made with pyparted."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cdpcore.api import Role
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import new_master_key
from cdpcore.manifest import Manifest
from hotcopy import cli, transfer
from hotcopy.capture import capture
from hotcopy.config import AgentConfig
from hotcopy.remote import Remote
from hotcopy.verify import iter_volume, open_point
from tests.loopdev import attached_loop
from tests.server.stored import object_location

from .images import make_image


@dataclass
class Agent:
    remote: Remote
    host: str
    codec: BlobCodec
    state_dir: Path
    token: str


@pytest.fixture
def agent(cdp_server, tmp_path: Path) -> Agent:  # type: ignore[no-untyped-def]
    host = f"h{uuid.uuid4().hex[:10]}"
    tokens = cdp_server.add_host(host)
    token = tokens[Role.agent]
    return Agent(cdp_server.client(token), host, BlobCodec(KeySet.from_master(new_master_key())),
                 tmp_path / "state", token)


@pytest.fixture
def gpt_image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "disk.img", "gpt")


@pytest.fixture
def loop_device(gpt_image: Path) -> Iterator[str]:
    with attached_loop(gpt_image, "-r") as dev:
        yield dev


def write_at(path: Path | str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def corrupt_chunk(cdp_server, host: str, chunk_id: bytes) -> None:  # type: ignore[no-untyped-def]
    """Flip a byte of a stored chunk inside its pack file, as bit rot would."""
    path, offset, length = object_location(cdp_server.data_dir, "chunks", chunk_id, host)
    data = bytearray(path.read_bytes())
    data[offset + length // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_point_equals(agent: Agent, point_id: str, copy: Path) -> Manifest:
    """Every volume of the point, read back through the server, equals the copy's bytes."""
    manifest = open_point(agent.remote, agent.host, agent.codec, point_id)
    _, specs = capture([str(copy)], "x")
    offsets = {s.name.split(":", 1)[1]: (s.offset, s.size) for s in specs}
    assert sorted(v.name.split(":", 1)[1] for v in manifest.volumes) == sorted(offsets)
    with open(copy, "rb") as f:
        for vol in manifest.volumes:
            offset, size = offsets[vol.name.split(":", 1)[1]]
            got = b"".join(iter_volume(agent.remote, agent.host, agent.codec, vol))
            f.seek(offset)
            assert got == f.read(size), f"volume {vol.name} of point {point_id} differs"
    return manifest


@pytest.fixture(autouse=True)
def _no_stop_left_behind() -> Iterator[None]:
    """A test that requests a stop (`transfer.request_stop`, or a SIGTERM to `cdp-agent run`
    in this process) must not make the next one's retries give up: the flag lives in shared
    memory (the forked workers see it), which no monkeypatching of the module undoes."""
    transfer._stop_requested.value = -1.0
    yield
    transfer._stop_requested.value = -1.0


def wait_for_point(lock: Path, proc: subprocess.Popen[str]) -> None:
    """Until `proc` holds the host's lock: a point is being taken."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if lock.exists():
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            finally:
                os.close(fd)
        time.sleep(0.05)
    raise AssertionError("no point started")


def run_in_process(monkeypatch: pytest.MonkeyPatch, conf: AgentConfig,
                    one_point: Callable[..., None]) -> Any:
    """`cdp-agent run` of `conf` in this process, each point `one_point`, until a SIGTERM;
    the handler it installs is undone afterwards (the stop it requests, by
    `_no_stop_left_behind`)."""
    monkeypatch.setattr(cli, "_load", lambda path: conf)
    monkeypatch.setattr(cli, "_one_point", one_point)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        return CliRunner().invoke(cli.cli, ["run"], catch_exceptions=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
