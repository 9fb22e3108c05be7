"""Fixtures of the agent tests: a host on the real CDP server (the `cdp_server` fixture of
tests/conftest.py), a repository key, and partitioned disk images made with pyparted."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cdpcore.api import Role
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import new_master_key
from hotcopy.remote import Remote
from tests.loopdev import attached_loop

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
