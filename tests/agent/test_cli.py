"""The `cdp-agent` command end to end, as a real process against the real server."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from cdpcore.errors import WrongKeyError
from hotcopy import cli
from hotcopy.config import AgentConfig
from hotcopy.errors import SourceError
from hotcopy.state import StateDir

from .conftest import Agent


def _agent(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDP_AGENT_CONFIG": str(config)}
    return subprocess.run([sys.executable, "-m", "hotcopy", *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False)


def test_init_backup_points_verify_status(agent: Agent, cdp_server, gpt_image: Path,  # type: ignore[no-untyped-def]
                                          tmp_path: Path) -> None:
    config = tmp_path / "etc" / "agent.toml"
    init = _agent("init", "--server", cdp_server.url, "--token", agent.token, "--host",
                  agent.host, "--passphrase", "s3cret", "--ca", str(cdp_server.ca_path),
                  "--source", str(gpt_image), "--state-dir", str(agent.state_dir),
                  "--print-recovery-key", config=config)
    assert init.returncode == 0, init.stderr
    assert "created a new key" in init.stdout and "recovery key: CDP1-" in init.stdout
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    done = _agent("backup", "--json", config=config)
    assert done.returncode == 0, done.stderr
    point = json.loads(done.stdout)
    listed = json.loads(_agent("points", "--json", config=config).stdout)
    assert [p["point_id"] for p in listed] == [point["point_id"]]
    checked = _agent("verify", "latest", "--json", config=config)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] and report["chunks_checked"] > 0
    state = json.loads(_agent("status", "--json", config=config).stdout)
    assert state["in_sync"] and state["local_point"] == point["point_id"]

    wrong = _agent("init", "--server", cdp_server.url, "--token", agent.token, "--host",
                   agent.host, "--passphrase", "not it", "--ca", str(cdp_server.ca_path),
                   config=tmp_path / "other.toml")
    assert wrong.returncode == WrongKeyError.exit_code
    assert "wrong passphrase" in wrong.stderr


def test_interval_below_a_minute_is_refused(tmp_path: Path) -> None:
    out = _agent("init", "--server", "https://127.0.0.1:1", "--token", "t", "--host", "h",
                 "--passphrase", "p", "--interval", "30", config=tmp_path / "a.toml")
    assert out.returncode == 2
    assert "interval must be at least 60 s, not 30" in out.stderr


def test_a_setting_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    """`sources = "/dev/sda"` (no brackets) was read as the paths "/", "d", "e", ..."""
    config = tmp_path / "a.toml"
    base = ('server = "https://127.0.0.1:1"\ntoken = "t"\nhost = "h"\n'
            'recovery_key = "k"\n')
    for line, message in (
            ('sources = "/dev/sda"', "sources must be a list of strings, e.g. "
                                     "[\"/dev/sda\"], not '/dev/sda'"),
            ("interval = true", "interval must be a whole number, not True"),
            ('skip_free = "yes"', "skip_free must be true or false, not 'yes'"),
            ("max_freeze = -1", "max_freeze must be 0 (no limit) or more seconds, not -1")):
        config.write_text(base + line + "\n")
        out = _agent("status", config=config)
        assert out.returncode == 2, out.stderr
        assert f"{config}: {message}" in out.stderr


def test_thaw_leaves_the_freeze_of_a_running_point_alone(tmp_path: Path) -> None:
    """The service's ExecStopPost (`cdp-agent thaw`) while a manual backup holds the host's
    lock: that run's frozen filesystems are its own, thawed by it or by its guard."""
    config = tmp_path / "a.toml"
    config.write_text('server = "https://127.0.0.1:1"\ntoken = "t"\nhost = "h"\n'
                      f'recovery_key = "k"\nstate_dir = "{tmp_path / "state"}"\n')
    store = StateDir(tmp_path / "state", "h")
    marker = store.dir / "frozen"
    marker.write_text("/nonexistent-cdp-test-mount\n")
    with store.lock():
        out = _agent("thaw", config=config)
        assert out.returncode == 0, out.stderr
        assert marker.exists()
    out = _agent("thaw", config=config)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()  # no run holds the lock: a killed run's leftover


def test_run_goes_on_after_a_failed_point_whatever_it_raised(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`cdp-agent run` is the service: a point failing with anything (a bug, a worker the
    OOM killer took) is logged, and the next tick still comes."""
    conf = AgentConfig(server="https://127.0.0.1:1", token="t", host="h", recovery_key="k")
    outcomes: list[BaseException | None] = [RuntimeError("boom"), SourceError("gone"), None]
    calls = []

    def one_point(*args: Any) -> None:
        calls.append(args)
        outcome = outcomes.pop(0)
        if outcome is None:
            os.kill(os.getpid(), signal.SIGTERM)  # what systemd sends to stop the service
            return
        raise outcome

    clock = iter(range(0, 10**6, 1000))  # every look at the clock: the interval is over
    monkeypatch.setattr(cli, "_load", lambda path: conf)
    monkeypatch.setattr(cli, "_one_point", one_point)
    monkeypatch.setattr(cli, "time", SimpleNamespace(monotonic=lambda: next(clock),
                                                     sleep=lambda s: None))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    cli.log.addHandler(handler)  # the CLI's own log setup does not propagate to pytest's
    previous = signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(cli.cli, ["run"], catch_exceptions=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
        cli.log.removeHandler(handler)
    assert result.exit_code == 0
    assert len(calls) == 3
    failed = [r for r in records if r.getMessage().startswith("point failed")]
    assert [r.getMessage() for r in failed] == [
        "point failed with an unexpected error (please report it)", "point failed: gone"]
    assert failed[0].exc_info is not None and failed[0].exc_info[0] is RuntimeError
