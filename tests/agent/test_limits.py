"""The agent's resource limits (how many workers, how slow a bandwidth cap) and how a stop
request (`transfer.request_stop`, the SIGTERM handler of `cdp-agent run`) reaches what
waits: the bandwidth cap's pause, and the retries of the forked sealing workers."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cdpcore import format as fmt
from cdpcore.api import ObjectKind
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.errors import ConnectionFailed, UsageError
from hotcopy import config as cfgmod
from hotcopy import sealpool, transfer
from hotcopy.config import AgentConfig
from hotcopy.sealpool import SealPool, Segment, Uploads

BS = 16 * 1024
_BASE = 'server = "https://127.0.0.1:1"\ntoken = "t"\nhost = "h"\nrecovery_key = "k"\n'


def _agent(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDP_AGENT_CONFIG": str(config)}
    return subprocess.run([sys.executable, "-m", "hotcopy", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def _conf(**settings: Any) -> AgentConfig:
    return AgentConfig(server="https://127.0.0.1:1", token="t", host="h", recovery_key="k",
                       **settings)


def test_more_workers_than_the_bound_are_refused(tmp_path: Path) -> None:
    """`workers = 100000` was accepted: the point forked until the process table (or the
    unit's memory) ran out, with its snapshots held, then failed with a BlockingIOError
    traceback, and the agent hung at exit joining the workers it had forked."""
    assert _conf(workers=cfgmod.MAX_WORKERS).check().workers == cfgmod.MAX_WORKERS
    config = tmp_path / "a.toml"
    config.write_text(_BASE + "workers = 100000\n")
    with pytest.raises(UsageError, match=f"^{config}: workers must be at most 16 "):
        cfgmod.load(config)
    out = _agent("backup", config=config)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert (f"{config}: workers must be at most 16 (each holds about 80 MiB while a disk "
            "is read), not 100000") in out.stderr


@pytest.mark.parametrize("where", ["file", "flag"])
def test_a_bandwidth_cap_of_a_few_bytes_is_refused(tmp_path: Path, where: str) -> None:
    """`bandwidth = 1` was accepted: a point's first upload waited 97 days for its turn."""
    assert _conf(bandwidth=cfgmod.MIN_BANDWIDTH).check().bandwidth == cfgmod.MIN_BANDWIDTH
    assert _conf(bandwidth=0).check().bandwidth == 0  # no cap
    config = tmp_path / "a.toml"
    config.write_text(_BASE + ("bandwidth = 1\n" if where == "file" else ""))
    out = _agent("backup", *(["--bandwidth", "1"] if where == "flag" else []), config=config)
    assert out.returncode == 2, out.stderr
    assert ("bandwidth must be 0 (no cap) or at least 65536 bytes per second (it is in "
            "bytes, not bits), not 1") in out.stderr


def test_a_stop_ends_the_wait_for_the_bandwidth_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap slept out the whole pause in one call: at a low cap, longer than systemd's
    TimeoutStopSec, whose SIGKILL left the point's snapshots behind. Once a stop is
    requested the cap no longer holds the point back."""
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds
        if len(slept) == 6:
            transfer.request_stop()  # SIGTERM two seconds into the second pause

    monkeypatch.setattr(transfer, "time", SimpleNamespace(monotonic=lambda: now[0],
                                                          sleep=sleep))
    throttle = transfer.Throttle(cfgmod.MIN_BANDWIDTH)
    throttle.take(4 * cfgmod.MIN_BANDWIDTH)  # 4 s: paced as before
    assert sum(slept) == pytest.approx(4.0)
    throttle.take(8 * 1024 * 1024)  # 128 s more, cut short
    assert sum(slept) == pytest.approx(6.0)
    throttle.take(8 * 1024 * 1024)  # after the stop: no pause at all
    assert sum(slept) == pytest.approx(6.0)


class _Silent:
    """A server that fails every upload (it no longer answers), counting the attempts in
    memory shared with the forked workers."""

    def __init__(self) -> None:
        self.uploads = multiprocessing.get_context("fork").Value("i", 0)

    def missing(self, host: str, kind: ObjectKind, ids: list[bytes]) -> set[bytes]:
        return set(ids)

    def upload(self, host: str, kind: ObjectKind, items: list[tuple[bytes, bytes]]) -> Any:
        with self.uploads.get_lock():
            self.uploads.value += 1
        raise ConnectionFailed("cannot reach the CDP server: read timed out")


def test_a_stop_in_the_agent_ends_the_retries_of_its_forked_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kill PID` signals the agent alone: its stop request set a global that each forked
    worker had its own copy of, so a worker retrying an upload went on for its whole retry
    budget (against a silent server about 93 minutes: 8 attempts of the client's 5 tries
    of 120 s each), and the point waited for it. Now the workers see the stop too and
    give up after the attempt under way."""
    monkeypatch.setattr(sealpool, "BATCH_BYTES", 1)  # every segment's chunks go up at once
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(8 * BS))
    codec = BlobCodec(KeySet.from_master(os.urandom(fmt.MASTER_KEY_SIZE)))
    remote = _Silent()
    # Half a minute of retries in all, each wait ending within a second of a stop.
    policy = transfer.RetryPolicy(attempts=150, first_delay=0.2, max_delay=0.2)
    uploads = Uploads(remote, "h", policy, transfer.Throttle(0), ask_first=False)  # type: ignore[arg-type]
    sender = transfer.Sender(remote, "h", policy, transfer.Throttle(0),  # type: ignore[arg-type]
                             transfer.UploadStats())
    with SealPool(codec, set(), 1, uploads) as pool:
        pool.submit(Segment(str(image), 0, ((0, 8),), 8 * BS, BS)).result()
        deadline = time.monotonic() + 10
        while remote.uploads.value < 2:  # the worker's upload thread is retrying
            assert time.monotonic() < deadline, "the worker never uploaded"
            time.sleep(0.05)
        stopped = time.monotonic()
        transfer.request_stop()  # in this process only, as SIGTERM's handler does
        with pytest.raises(ConnectionFailed):
            pool.flush(sender)  # waits for the worker's upload, and raises its failure
        took = time.monotonic() - stopped
    assert took < 5, f"the worker retried on for {took:.1f} s after the stop"
    assert remote.uploads.value < 2 + 5 / 0.2


def test_a_second_stop_only_shortens_the_grace() -> None:
    """SIGTERM gives requests under way the configured grace; a Ctrl-C after it cuts them
    at once, and a SIGTERM after a Ctrl-C gives none back."""
    assert (transfer.stopping(), transfer.stop_grace()) == (False, None)
    transfer.request_stop(60)
    assert (transfer.stopping(), transfer.stop_grace()) == (True, 60)
    transfer.request_stop(0)
    transfer.request_stop(60)
    assert transfer.stop_grace() == 0
