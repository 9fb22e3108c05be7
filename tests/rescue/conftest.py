"""Fixtures of the rescue tests: a host with a wrapped key on the real server fixture."""

from __future__ import annotations

from typing import Any

import pytest

from cdpcore.api import Role
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import WrappedKey, new_master_key

MIB = 1024 * 1024
PASS = "correct horse"


@pytest.fixture
def repo_host(cdp_server: Any) -> dict[str, Any]:
    """Host web1 with its key stored on the server (cheap scrypt: n=2**10)."""
    tokens = cdp_server.add_host("web1")
    agent = cdp_server.client(tokens[Role.agent])
    master = new_master_key()
    agent.put_key("web1", WrappedKey.create(master, PASS, n=2**10).to_json())
    return {"agent": agent, "restore": cdp_server.client(tokens[Role.restore]),
            "token": tokens[Role.restore], "codec": BlobCodec(KeySet.from_master(master)),
            "server": cdp_server}
