"""Fixtures of the TUI tests: a real CDP server with host web1, its key, and real recovery
points of a small GPT disk image (made by tests/rescue/pointmaker.py)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cdpcore.api import Role
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import WrappedKey, new_master_key
from rescue.bootopts import BootOptions
from rescue.tui.app import RescueApp
from rescue.tui.settings import Settings
from tests.rescue.pointmaker import make_point

MIB = 1024 * 1024
PASS = "correct horse"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def make_source(path: Path, size: int = 16 * MIB) -> None:
    """A GPT disk image with an ESP-like and a data partition full of random bytes."""
    sh("truncate", "-s", str(size), str(path))
    sh("sgdisk", "-n1:2048:+4M", "-t1:ef00", "-c1:EFI", "-n2:0:0", "-t2:8300", "-c2:root",
       str(path))
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"boot code stand-in")
        f.seek(MIB)
        f.write(os.urandom(4 * MIB))
        f.seek(5 * MIB)
        f.write(os.urandom(size - 6 * MIB))


@dataclass
class Env:
    url: str
    ca: str
    fingerprint: str
    token: str
    admin_token: str
    source: Path
    target: Path
    tmp: Path
    agent: Any
    codec: BlobCodec
    points: list[Any] = field(default_factory=list)
    shell_calls: list[str] = field(default_factory=list)
    power_calls: list[str] = field(default_factory=list)

    def settings(self, **kw: Any) -> Settings:
        boot = kw.pop("boot", BootOptions(server=self.url, token=self.token, ca=self.ca))
        defaults: dict[str, Any] = dict(
            boot=boot, targets=[str(self.target)], discover=False, dry_run_network=True,
            state_dir=str(self.tmp / "state"), basic=False,
            shell=lambda: self.shell_calls.append("shell"), power=self.power_calls.append)
        defaults.update(kw)
        return Settings(**defaults)

    def app(self, **kw: Any) -> RescueApp:
        return RescueApp(self.settings(**kw))


@pytest.fixture
def env(cdp_server: Any, tmp_path: Path) -> Env:
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    master = new_master_key()
    agent.put_key("web1", WrappedKey.create(master, PASS, n=2**10).to_json())
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    make_source(source)
    target.write_bytes(os.urandom(16 * MIB))  # stale content that must not survive
    e = Env(url=cdp_server.url, ca=str(cdp_server.ca_path), fingerprint=cdp_server.fingerprint,
            token=tokens[Role.restore], admin_token=cdp_server.admin_token, source=source,
            target=target, tmp=tmp_path, agent=agent,
            codec=BlobCodec(KeySet.from_master(master)))
    e.points.append(make_point(agent, "web1", e.codec, [str(source)]))
    return e
