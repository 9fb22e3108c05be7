"""The scripted command line's handling of what a sysadmin gives it: answers-file values
of the wrong type, confirmation prompts beside --json, files it cannot write, and resume
states another restore has made stale."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cdpcore.errors import UsageError
from rescue import cli
from rescue.answers import load_answers
from rescue.engine import Engine, Event, ExecuteOptions
from rescue.repo import Repository
from tests.ctrlc import interruptible, signal_state

from .conftest import MIB, PASS
from .test_restore import digest, make_source, partitions, point_of


@pytest.fixture
def scene(repo_host: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    make_source(source, "gpt")
    point_of(repo_host, source)
    target.write_bytes(b"\xa5" * (64 * MIB))
    server = repo_host["server"]
    answers = {"server": server.url, "ca": str(server.ca_path), "token": repo_host["token"],
               "host": "web1", "passphrase": PASS, "map": {"vda.img": str(target)}}
    return {"target": target, "answers": answers, "tmp": tmp_path, "source": source}


def invoke(tmp: Path, answers: dict[str, Any], *args: str) -> Any:
    path = tmp / "answers.json"
    path.write_text(json.dumps(answers))
    return CliRunner().invoke(cli.cli, [*args, "--answers", str(path)])


def test_a_quoted_false_yes_does_not_confirm_a_restore(scene: dict[str, Any]) -> None:
    before = digest(scene["target"])
    result = invoke(scene["tmp"], {**scene["answers"], "yes": "false"}, "restore")
    assert result.exit_code == 2, result.output
    assert result.output == (f"rescue: error: answers file {scene['tmp'] / 'answers.json'}: "
                             "'yes' must be true or false (JSON booleans, unquoted), not "
                             "'false'\n")
    assert digest(scene["target"]) == before


@pytest.mark.parametrize(("key", "value", "want"), [
    ("verify", "readback", "one of blocks, read-back"),
    ("resize", "grow", "one of same, grow-last, proportional"),
    ("grow_fs", "no", "true or false (JSON booleans, unquoted)"),
    ("reinstall_bootloader", "false", "true or false (JSON booleans, unquoted)"),
    ("workers", "four", "a whole number from 1 to 64"),
    ("workers", 0, "a whole number from 1 to 64"),
    ("workers", 100000, "a whole number from 1 to 64"),  # forked that many processes
    ("passphrase", 123456, "a string"),
    ("after", "halt", "one of shell, reboot, poweroff"),
    # "cannot read point choice '20261124'"
    ("point", 20261124, "a string"),
])
def test_answers_values_of_the_wrong_kind_are_refused(tmp_path: Path, key: str, value: Any,
                                                      want: str) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"host": "web1", key: value}))
    with pytest.raises(UsageError) as err:
        load_answers(str(path))
    # A secret's value is never echoed (it would reach the consoles and auto.log).
    shown = "a value of type int" if key == "passphrase" else repr(value)
    assert str(err.value) == f"answers file {path}: {key!r} must be {want}, not {shown}"


def test_good_answers_values_load(tmp_path: Path) -> None:
    doc = {"host": "web1", "yes": True, "grow_fs": False, "verify": "read-back",
           "resize": "grow-last", "workers": 3, "point": "latest", "state_dir": None}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    assert load_answers(str(path)).values == doc


class _Stop(Exception):
    pass


def test_a_restore_in_between_makes_an_older_resume_state_stale(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """Point P stops half way (its resume state stays), point Q is then restored onto the
    same target (the TUI's "Another point"), then P again: P must start from the wipe, not
    skip the steps whose bytes Q replaced."""
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    make_source(source, "gpt")
    p = point_of(repo_host, source)
    wanted = source.read_bytes()
    with open(source, "r+b") as f:  # Q differs from P in partition 1
        f.seek(2048 * 512 + 4096)
        f.write(b"\x5a" * MIB)
    q = point_of(repo_host, source)
    target.write_bytes(b"\0" * (64 * MIB))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan_p = engine.plan(p.point_id, {"vda.img": str(target)})
    last = [a for a in plan_p.actions if a.type == "stream"][-1]

    def stop_at_last(ev: Event) -> None:
        if ev.kind == "start" and ev.action is last:
            raise _Stop

    with pytest.raises(_Stop):
        engine.execute(plan_p, ExecuteOptions(), stop_at_last)
    state_p = tmp_path / f"rescue-web1-{p.point_id[:12]}.state.json"
    assert state_p.exists()
    notes: list[str] = []
    engine.execute(engine.plan(q.point_id, {"vda.img": str(target)}), ExecuteOptions(),
                   lambda ev: notes.append(ev.message) if ev.kind == "note" else None)
    assert notes == [f"removed {state_p}: that restore's targets are overwritten now, it "
                     "cannot be resumed"]
    assert not state_p.exists()
    report = engine.execute(engine.plan(p.point_id, {"vda.img": str(target)}),
                            ExecuteOptions())
    assert report.ok and not any(a["status"] == "done earlier" for a in report.actions)
    restored = target.read_bytes()
    for part in partitions(source):
        if part["type"] != "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F":  # swap is made anew
            begin, end = part["start"] * 512, (part["start"] + part["size"]) * 512
            assert restored[begin:end] == wanted[begin:end], part


def test_restore_json_on_a_terminal_keeps_the_prompt_off_stdout(scene: dict[str, Any]) -> None:
    """`rescue restore --json > report.json` typed at a console: the plan and the YES
    question go to the terminal (stderr), stdout is the report alone."""
    tmp = scene["tmp"]
    (tmp / "answers.json").write_text(json.dumps(scene["answers"]))
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "rescue", "restore", "--json",
                             "--answers", str(tmp / "answers.json")],
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    os.write(master, b"YES\n")
    out, err = proc.communicate(timeout=120)
    os.close(master)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["ok"] is True and report["bytes_restored"] > 0
    text = err.decode()
    assert f"Everything on {scene['target']} will be destroyed. Type YES to go on: " in text
    assert text.index("Steps (destructive):") < text.index("Type YES")


@pytest.mark.parametrize(("answers", "want"), [
    ({"server": "backup.example.com:8443"},
     "server URL 'backup.example.com:8443': expected https://HOST[:PORT] or http://HOST[:PORT]"),
    # a requests traceback (exit 1)
    ({"server": "https://127.0.0.1:abc"},
     "server URL 'https://127.0.0.1:abc': expected https://HOST[:PORT] or http://HOST[:PORT] (port 1 to 65535)"),
    ({"server": "https://127.0.0.1:99999"},
     "server URL 'https://127.0.0.1:99999': expected https://HOST[:PORT] or http://HOST[:PORT] (port 1 to 65535)"),
    ({"ca": "/nonexistent/ca.pem"},
     "CA certificate file /nonexistent/ca.pem does not exist or is not a file"),
    ({"fingerprint": "3f1c...e2"},
     "fingerprint '3f1c...e2': expected the server certificate's SHA-256, 64 hex digits "
     "(colons allowed), as `cdp-server cert` prints it"),
])
def test_bad_server_options_are_named_before_connecting(tmp_path: Path, answers: dict[str, str],
                                                        want: str) -> None:
    doc = {"server": "https://127.0.0.1:9", "token": "t", "host": "web1", **answers}
    result = invoke(tmp_path, doc, "points")
    assert result.exit_code == 2, result.output
    assert result.output == f"rescue: error: {want}\n"


def test_plan_save_into_a_missing_directory_is_a_clear_error(scene: dict[str, Any]) -> None:
    result = invoke(scene["tmp"], scene["answers"], "plan", "--save", "/nonexistent/plan.json")
    assert result.exit_code == 2, result.output
    assert result.output == ("rescue: error: cannot write plan file /nonexistent/plan.json: "
                             "No such file or directory\n")


def test_a_saved_plan_refuses_answers_that_would_shape_another(scene: dict[str, Any]) -> None:
    """--plan with an answers file that names another map and point: refused, not ignored."""
    tmp, target = scene["tmp"], scene["target"]
    saved = tmp / "plan.json"
    assert invoke(tmp, scene["answers"], "plan", "--save", str(saved)).exit_code == 0
    before = digest(target)
    doc = {**scene["answers"], "map": {"vda.img": "/dev/sdz"}, "point": "ffff0000",
           "yes": True}
    result = invoke(tmp, doc, "restore", "--plan", str(saved))
    assert result.exit_code == 2, result.output
    assert result.output == (f"rescue: error: --plan {saved} already decides what the answers "
                             "file's point, map would: drop them from it, or do not use "
                             "--plan\n")
    assert digest(target) == before
    no_shape = {k: v for k, v in doc.items() if k not in ("map", "point")}
    assert invoke(tmp, no_shape, "restore", "--plan", str(saved), "--dry-run").exit_code == 0


def test_a_check_keeps_the_restores_report_and_files_its_own(scene: dict[str, Any]) -> None:
    """`rescue verify` after a restore: the restore's report stays what the restore did,
    and the check's report is a file of its own."""
    state = scene["tmp"] / "state"
    answers = {**scene["answers"], "state_dir": str(state), "yes": True}
    assert invoke(scene["tmp"], answers, "restore").exit_code == 0
    (restored,) = state.glob("rescue-web1-*.report.json")
    before = restored.read_text()
    assert json.loads(before)["volumes"]  # the restore's record
    result = invoke(scene["tmp"], {k: v for k, v in answers.items() if k != "yes"}, "verify")
    assert result.exit_code == 0, result.output
    assert restored.read_text() == before
    (checked,) = state.glob("rescue-web1-*.verify.report.json")
    assert json.loads(checked.read_text())["ok"] is True
    assert [a["type"] for a in json.loads(checked.read_text())["actions"]] == \
        ["verify"] * len(json.loads(checked.read_text())["actions"])


def test_a_state_directory_that_is_a_file_is_named_before_anything_is_written(
        scene: dict[str, Any]) -> None:
    taken = scene["tmp"] / "not-a-dir"
    taken.write_text("x")
    before = digest(scene["target"])
    result = invoke(scene["tmp"], {**scene["answers"], "state_dir": str(taken), "yes": True},
                    "restore")
    assert result.exit_code == 2, result.output
    assert result.output.endswith(
        f"rescue: error: state directory {taken}: File exists: choose another with "
        '--state-dir (or "state_dir" in the answers file)\n')
    assert digest(scene["target"]) == before


def test_relative_paths_in_an_answers_file_are_read_from_its_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / "a.json").write_text(json.dumps({"ca": "ca.pem", "passphrase_file": "keys/pass",
                                              "state_dir": "/var/tmp/cdp", "host": "web1"}))
    monkeypatch.chdir(tmp_path)  # elsewhere: relative to the working directory, they missed
    assert load_answers("stick/a.json").values == {
        "ca": str(stick / "ca.pem"), "passphrase_file": str(stick / "keys/pass"),
        "state_dir": "/var/tmp/cdp", "host": "web1"}


def test_an_answers_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    """A Latin-1 byte was a UnicodeDecodeError traceback (exit 1), in `rescue auto` a
    CDP-RESTORE-DONE line with exit=1 and Python's words."""
    path = tmp_path / "a.json"
    path.write_bytes(b'{"host": "caf\xe9"}')
    with pytest.raises(UsageError) as err:
        load_answers(str(path))
    assert str(err.value).startswith(f"answers file {path} is not UTF-8 text: ")


def test_the_input_ending_at_the_confirmation_is_not_confirmed(scene: dict[str, Any]) -> None:
    """Ctrl-D (or Ctrl-C) at "Type YES" printed click's bare "Aborted!" and exited 1: not
    the "not confirmed" of the exit status table (2), nor whether anything was written."""
    tmp = scene["tmp"]
    (tmp / "answers.json").write_text(json.dumps(scene["answers"]))
    before = digest(scene["target"])
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "rescue", "restore",
                             "--answers", str(tmp / "answers.json")],
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slave)
    os.write(master, b"\x04")  # the terminal's end of input
    _out, err = proc.communicate(timeout=120)
    os.close(master)
    assert proc.returncode == 2, err
    assert err.decode().endswith("rescue: error: not confirmed: nothing was written\n")
    assert digest(scene["target"]) == before


def test_a_ctrl_c_exits_130_as_shells_report_an_interrupted_program() -> None:
    """click's standalone mode made a Ctrl-C exit 1, the status of "other error"."""
    with socket.socket() as silent:  # accepts, never answers the TLS handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(60)
        proc = subprocess.Popen(
            [sys.executable, "-m", "rescue", "points", "--server",
             f"https://127.0.0.1:{silent.getsockname()[1]}", "--token", "t", "--host", "web1",
             "--fingerprint", "ab" * 32],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=interruptible)
        conn, _ = silent.accept()  # the program now waits for the server's answer
        with conn:
            state = signal_state(proc.pid)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (err, state)
    assert (out, err.strip()) == ("", "")
