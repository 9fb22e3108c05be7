"""The `cdp-agent` command end to end, as a real process against the real server."""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from cdpcore import format as fmt
from cdpcore.errors import ConnectionFailed, WrongKeyError
from hotcopy import cli, transfer
from hotcopy.config import AgentConfig
from hotcopy.errors import SourceError
from hotcopy.state import StateDir
from tests.ctrlc import interruptible, signal_state

from .conftest import Agent, run_in_process, wait_for_point


def _agent(*args: str, config: Path, cwd: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    """A point runs as a process of its own: it lowers its own CPU and I/O priority."""
    env = {**os.environ, "CDP_AGENT_CONFIG": str(config)}
    return subprocess.run([sys.executable, "-m", "hotcopy", *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False, cwd=cwd)


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


def test_compression_level_zero_sends_blocks_as_they_are(  # type: ignore[no-untyped-def]
        agent: Agent, cdp_server, gpt_image: Path, tmp_path: Path) -> None:
    """`--compression-level 0`: every new chunk is sent as it is (block and blob header),
    and the point still verifies with a codec of the default level."""
    config = tmp_path / "agent.toml"
    init = _agent("init", "--server", cdp_server.url, "--token", agent.token, "--host",
                  agent.host, "--passphrase", "s3cret", "--ca", str(cdp_server.ca_path),
                  "--source", str(gpt_image), "--state-dir", str(agent.state_dir),
                  config=config)
    assert init.returncode == 0, init.stderr
    done = _agent("backup", "--compression-level", "0", "--json", config=config)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)["stats"]
    assert stats["new_chunks"] > 0
    assert stats["new_bytes"] == stats["new_chunks"] * (16384 + fmt.BLOB_OVERHEAD)
    checked = _agent("verify", "latest", "--json", config=config)
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"], checked.stderr


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

    def one_point(*args: Any, **kwargs: Any) -> None:
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


_BASE = 'server = "https://127.0.0.1:1"\ntoken = "t"\nhost = "h"\nrecovery_key = "k"\n'


def test_a_config_that_is_not_utf8_is_a_configuration_error(tmp_path: Path) -> None:
    """A stray Latin-1 byte in the file gave a UnicodeDecodeError traceback (exit 1)."""
    config = tmp_path / "a.toml"
    config.write_bytes(_BASE.encode() + b'state_dir = "/var/lib/caf\xe9"\n')
    out = _agent("status", config=config)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"cannot read configuration {config}: not UTF-8 text" in out.stderr


def test_missing_settings_are_named(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('server = "https://127.0.0.1:1"\nhost = "h"\n')
    out = _agent("status", config=config)
    assert out.returncode == 2, out.stderr
    assert f"{config}: missing settings recovery_key, token" in out.stderr


@pytest.mark.parametrize(("line", "message"), [
    # -1 read as "never" made every point a full scan (`points_since_full + 1 >= -1`)
    ("full_scan_every = -1", "full_scan_every must be 0 (never) or more points, not -1"),
    ("bandwidth = -5", "bandwidth must be 0 (no cap) or more bytes per second, not -5"),
    ("workers = -2", "workers must be 0 (one per CPU plus one, at most 3) or more, not -2"),
    ("block_size = 1000", "block_size: block size 1000 is not a power of two in [4096, 4194304]"),
    ("stop_grace = -1", "stop_grace must be 0 (cut requests at once) or more seconds, not -1"),
    ("compression_level = 22", "compression_level must be 0 (none) or a zstd level from -7 "
                               "(fastest) to 19 (smallest), not 22"),
    # read from the service's working directory (/), not from where the file was written
    ('state_dir = "state"', "state_dir: 'state' is not an absolute path (the service does "
                            "not run in the directory it was written from)"),
    ('sources = ["/dev/sda", "disk.img"]', "sources: 'disk.img' is not an absolute path"),
])
def test_out_of_range_settings_are_refused(tmp_path: Path, line: str, message: str) -> None:
    config = tmp_path / "a.toml"
    config.write_text(_BASE + line + "\n")
    out = _agent("status", config=config)
    assert out.returncode == 2, out.stderr
    assert f"{config}: {message}" in out.stderr


def test_a_negative_bandwidth_flag_is_refused(tmp_path: Path) -> None:
    """`--bandwidth -1` meant no cap at all, silently."""
    config = tmp_path / "a.toml"
    config.write_text(_BASE)
    out = _agent("backup", "--bandwidth", "-1", config=config)
    assert out.returncode == 2, out.stderr
    assert "bandwidth must be 0 (no cap) or more bytes per second, not -1" in out.stderr


def test_init_does_not_overwrite_an_existing_config(tmp_path: Path) -> None:
    """A second `init` (a new token, say) replaced the file silently, dropping the settings
    written by hand (`tracking = "era"`, `sources`, ...)."""
    config = tmp_path / "a.toml"
    config.write_text(_BASE + 'tracking = "era"\n')
    args = ("init", "--server", "https://127.0.0.1:1", "--token", "t2", "--host", "h",
            "--passphrase", "p")
    out = _agent(*args, config=config)
    assert out.returncode == 2, out.stderr
    assert (f"{config} exists: edit it, or pass --force to replace it (its other "
            "settings are then lost)") in out.stderr
    assert config.read_text() == _BASE + 'tracking = "era"\n'
    forced = _agent(*args, "--force", config=config)
    assert forced.returncode == 9, forced.stderr  # past the check: the server is unreachable


def test_init_names_a_config_path_it_cannot_write(agent: Agent, cdp_server,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("a file, not a directory")
    config = tmp_path / "etc" / "agent.toml"
    out = _agent("init", "--server", cdp_server.url, "--token", agent.token, "--host",
                 agent.host, "--passphrase", "s3cret", "--ca", str(cdp_server.ca_path),
                 "--state-dir", str(agent.state_dir), config=config)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"cannot write configuration {config}: " in out.stderr


def test_init_asks_twice_for_a_new_keys_passphrase_once_for_an_existing(
        agent: Agent, cdp_server, gpt_image: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in a new key's passphrase, asked once, locked the points away behind a
    passphrase nobody knew. Relative paths are stored as absolute ones: the service does
    not run in the directory init ran in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDP_PASSPHRASE", raising=False)
    server = ("--server", cdp_server.url, "--token", agent.token, "--host", agent.host,
              "--ca", str(cdp_server.ca_path))
    config = tmp_path / "agent.toml"
    runner = CliRunner()
    new = runner.invoke(cli.cli, ["init", *server, "--state-dir", "state", "--source",
                                  gpt_image.name], input="s3cret\ntypo\ns3cret\ns3cret\n",
                        env={"CDP_AGENT_CONFIG": str(config)})
    assert new.exit_code == 0, new.output
    assert new.output.count("Passphrase for the new key: ") == 2
    assert new.output.count("Repeat for confirmation: ") == 2
    assert "Error: The two entered values do not match." in new.output
    saved = tomllib.loads(config.read_text())
    assert (saved["state_dir"], saved["sources"]) == (str(tmp_path / "state"), [str(gpt_image)])

    again = runner.invoke(cli.cli, ["init", *server], input="s3cret\n",
                          env={"CDP_AGENT_CONFIG": str(tmp_path / "second.toml")})
    assert again.exit_code == 0, again.output
    assert again.output.count("Passphrase: ") == 1 and "Repeat" not in again.output
    assert "unwrapped the existing key" in again.output
    assert tomllib.loads((tmp_path / "second.toml").read_text())["recovery_key"] == \
        saved["recovery_key"]

    # A relative --source on the command line is where the command runs, as with any tool.
    point = _agent("backup", "--json", "--source", gpt_image.name, config=config,
                   cwd=gpt_image.parent)
    assert point.returncode == 0, point.stderr
    assert [p.point_id for p in agent.remote.points(agent.host)] == \
        [json.loads(point.stdout)["point_id"]]


def test_run_abandons_a_point_on_sigint_and_finishes_it_on_sigterm(
        agent: Agent, cdp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C stops at once: exit 130, nothing committed, no copy of the image left. The
    service's SIGTERM lets the point finish (the unit allows it 120 s) and exits 0. A
    bandwidth cap stretches the point (4 MiB of random data at 512 KiB/s: 8 s)."""
    image = tmp_path / "images" / "disk.img"
    image.parent.mkdir()
    image.write_bytes(os.urandom(4 * 1024 * 1024))
    config = tmp_path / "agent.toml"
    init = _agent("init", "--server", cdp_server.url, "--token", agent.token, "--host",
                  agent.host, "--passphrase", "s3cret", "--ca", str(cdp_server.ca_path),
                  "--source", str(image), "--state-dir", str(agent.state_dir), config=config)
    assert init.returncode == 0, init.stderr
    lock = agent.state_dir / agent.host / "lock"
    env = {**os.environ, "CDP_AGENT_CONFIG": str(config)}
    run = [sys.executable, "-m", "hotcopy", "run", "--bandwidth", str(512 * 1024)]

    interrupted = subprocess.Popen(run, env=env, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=interruptible)
    wait_for_point(lock, interrupted)
    interrupted.send_signal(signal.SIGINT)
    try:
        interrupted.wait(timeout=30)
    except subprocess.TimeoutExpired:
        state = signal_state(interrupted.pid)
        interrupted.kill()
        raise AssertionError(f"the agent went on after SIGINT:\n{state}\n"
                             f"{interrupted.communicate()[1]}") from None
    assert interrupted.returncode == 130, interrupted.communicate()[1]
    assert agent.remote.points(agent.host) == []
    assert os.listdir(image.parent) == ["disk.img"]

    stopped = subprocess.Popen(run, env=env, stderr=subprocess.PIPE, text=True)
    wait_for_point(lock, stopped)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=120) == 0, stopped.communicate()[1]
    assert len(agent.remote.points(agent.host)) == 1
    assert os.listdir(image.parent) == ["disk.img"]


def test_run_keeps_its_ticks_without_drifting_or_piling_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Points start every `interval` seconds from the first, whatever a point takes; one
    that takes longer than the interval starts the next at once, not several to catch up.
    Sleeping whole seconds from the end of a point made each start up to 1 s later."""
    conf = AgentConfig(server="https://127.0.0.1:1", token="t", host="h", recovery_key="k",
                       interval=60)
    now = [0.0]
    durations = [7.3, 7.3, 7.3, 150.0, 7.3, 7.3]
    starts: list[float] = []

    def one_point(*args: Any, **kwargs: Any) -> None:
        starts.append(now[0])
        now[0] += durations[len(starts) - 1]
        if len(starts) == len(durations):
            os.kill(os.getpid(), signal.SIGTERM)

    def sleep(seconds: float) -> None:
        assert seconds > 0
        now[0] += seconds

    clock = SimpleNamespace(monotonic=lambda: now[0], sleep=sleep)
    monkeypatch.setattr(cli, "time", clock)
    monkeypatch.setattr(transfer, "time", clock)  # the wait between points
    assert run_in_process(monkeypatch, conf, one_point).exit_code == 0
    assert starts == pytest.approx([0, 60, 120, 180, 330, 390])


def test_sigterm_ends_the_retries_of_a_point_whose_server_is_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM lets the point finish, but one retrying a server that is down waited out its
    retries (about two minutes per request): past systemd's TimeoutStopSec, whose SIGKILL
    left the point's snapshots behind. Now the failure after the stop fails the point."""
    conf = AgentConfig(server="https://127.0.0.1:1", token="t", host="h", recovery_key="k")
    slept: list[float] = []
    tries: list[int] = []

    def down() -> None:
        tries.append(1)
        if len(tries) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # during the point: systemctl stop
        raise ConnectionFailed("connection refused")

    def one_point(*args: Any, **kwargs: Any) -> None:
        transfer.retrying(transfer.RetryPolicy(), "committing the point", down)

    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(transfer, "time", SimpleNamespace(monotonic=lambda: now[0],
                                                          sleep=sleep))
    assert run_in_process(monkeypatch, conf, one_point).exit_code == 0
    assert len(tries) == 2 and sum(slept) <= 2  # the first retry's wait, no more


@pytest.mark.parametrize(("line", "message"), [
    # each of these was a requests traceback (exit 1) at the first request
    ('server = "https://127.0.0.1:abc"', "server URL 'https://127.0.0.1:abc': expected "
                                         "https://HOST[:PORT] (port 1 to 65535)"),
    ('server = "https://127.0.0.1:99999"', "server URL 'https://127.0.0.1:99999': expected "
                                           "https://HOST[:PORT] (port 1 to 65535)"),
    ('server = "https://"', "server URL 'https://': expected https://HOST[:PORT]"),
    ('ca = "/nonexistent/ca.pem"', "CA certificate file /nonexistent/ca.pem does not "
                                   "exist or is not a file"),
    # a directory or a fingerprint of the wrong form was "TLS check ... failed" (exit 9)
    ('ca = "/"', "CA certificate file / does not exist or is not a file"),
    ('fingerprint = "3f1c...e2"', "fingerprint '3f1c...e2': expected the server "
                                  "certificate's SHA-256, 64 hex digits (colons allowed), "
                                  "as `cdp-server cert` prints it"),
    # "GET /hosts//key: 404 Not Found" (exit 7)
    ('host = ""', "invalid host name '': use letters, digits and ._:+/- (at most 128, no "
                  "'..')"),
    ('host = "web/1"', "invalid host name 'web/1': '/' cannot appear in a URL path"),
])
def test_connection_settings_are_checked_before_connecting(tmp_path: Path, line: str,
                                                           message: str) -> None:
    config = tmp_path / "a.toml"
    key = line.split(" =")[0]
    config.write_text("".join(f"{k} = {json.dumps(v)}\n"
                              for k, v in tomllib.loads(_BASE).items() if k != key)
                      + line + "\n")
    out = _agent("status", config=config)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr == f"cdp-agent: error: {config}: {message}\n"


def test_init_checks_the_server_url_and_ca_before_connecting(tmp_path: Path) -> None:
    args = ("init", "--token", "t", "--host", "h", "--passphrase", "p")
    out = _agent(*args, "--server", "https://127.0.0.1:abc", config=tmp_path / "a.toml")
    assert (out.returncode, out.stderr) == (2, "cdp-agent: error: server URL "
                                               "'https://127.0.0.1:abc': expected "
                                               "https://HOST[:PORT] (port 1 to 65535)\n")
    out = _agent(*args, "--server", "https://127.0.0.1:1", "--ca", str(tmp_path / "ca.pem"),
                 config=tmp_path / "a.toml")
    assert (out.returncode, out.stderr) == (2, f"cdp-agent: error: CA certificate file "
                                               f"{tmp_path / 'ca.pem'} does not exist or is "
                                               "not a file\n")


def test_init_without_a_terminal_or_passphrase_says_so(agent: Agent, cdp_server,  # type: ignore[no-untyped-def]
                                                       tmp_path: Path) -> None:
    """`cdp-agent init ... < /dev/null` (a provisioning script) exited 130, "interrupted",
    after a bare "Passphrase: "."""
    env = {k: v for k, v in os.environ.items() if k != "CDP_PASSPHRASE"}
    out = subprocess.run([sys.executable, "-m", "hotcopy", "init", "--server", cdp_server.url,
                          "--token", agent.token, "--host", agent.host, "--ca",
                          str(cdp_server.ca_path), "--config", str(tmp_path / "a.toml")],
                         input="", capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.endswith("cdp-agent: error: no passphrase: the input ended before one "
                               "was typed; give --passphrase or CDP_PASSPHRASE\n")
    assert not (tmp_path / "a.toml").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--wait", "nan"], "Invalid value for '--wait': 'nan' is not a finite number of seconds"),
    (["--wait", "inf"], "Invalid value for '--wait': 'inf' is not a finite number of seconds"),
    (["--wait", "-5"], "Invalid value for '--wait': -5.0 is not in the range x>=0."),
    (["--block-sectors", "0"], "Invalid value for '--block-sectors': 0 is not in the range "
                               "x>=1."),
])
def test_era_attach_refuses_a_wait_or_block_size_that_makes_no_sense(
        monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    """`--wait nan` waited for the devices forever (and `inf` too); `--block-sectors 0` went
    to dmsetup, whose error named neither the option nor the rule."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(cli.eramod, "attach", lambda *a: calls.append(a) or "/dev/mapper/x")
    result = CliRunner().invoke(cli.cli, ["era", "attach", "/dev/vg0/data", "--metadata",
                                          "/dev/vg0/data-era", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert calls == []
