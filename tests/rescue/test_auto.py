"""`rescue auto`, the unattended restore the rescue init runs for `cdp.auto=1`: its pure
decisions, and the command against a real server onto image files (answers from a path
and from an HTTP URL). Without cdp.auto=1 nothing is fetched or written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cdpcore.errors import CommandFailed, ConnectionFailed, SafetyError, UsageError
from rescue import auto, bootopts, cli, discover
from rescue.answers import Answers
from rescue.auto import AutoRun, after_restore, decide, failed_line, given_options
from rescue.bootopts import parse_cmdline
from rescue.report import RestoreReport, VolumeReport

from .conftest import MIB, PASS
from .test_restore import check_equal, digest, make_source, point_of


def test_nothing_happens_without_cdp_auto() -> None:
    assert decide(parse_cmdline("cdp.answers=/run/a.json cdp.server=https://x")) is None
    assert decide(parse_cmdline("cdp.auto=0 cdp.answers=http://10.0.2.100/a.json")) is None
    assert decide(parse_cmdline("")) is None


def test_where_the_answers_come_from() -> None:
    assert decide(parse_cmdline("cdp.auto=1 cdp.answers=http://10.0.2.100:8080/a.yaml")) == \
        AutoRun("http://10.0.2.100:8080/a.yaml", is_url=True)
    assert decide(parse_cmdline("cdp.auto=1 cdp.answers=https://h/a")).is_url  # type: ignore[union-attr]
    assert decide(parse_cmdline("cdp.auto cdp.answers=/etc/cdp/answers.json")) == \
        AutoRun("/etc/cdp/answers.json", is_url=False)
    assert decide(parse_cmdline("cdp.auto=1", {"answers": "/etc/cdp/answers.json"})) == \
        AutoRun("/etc/cdp/answers.json", is_url=False)  # baked into the image
    with pytest.raises(UsageError, match=r"cdp\.auto=1 needs cdp\.answers=URL\|path"):
        decide(parse_cmdline("cdp.auto=1 cdp.server=https://x cdp.token=t"))
    with pytest.raises(UsageError, match="only http, https or a local path"):
        decide(parse_cmdline("cdp.auto=1 cdp.answers=tftp://10.0.2.2/a.json"))


def test_boot_options_win_over_the_answers_file() -> None:
    kw = given_options(parse_cmdline("cdp.auto=1 cdp.answers=/a cdp.point=abcd1234 "
                                     "cdp.host=web2"))
    a = Answers({"point": "latest", "host": "web1", "server": "https://s"})
    assert a.get("point", kw["point"]) == "abcd1234"
    assert a.get("host", kw["host_name"]) == "web2"
    assert a.get("server", kw["server"]) == "https://s"
    assert a.maps(kw["maps"]) == []


def test_after_restore() -> None:
    assert after_restore(Answers({})) == "shell"
    assert after_restore(Answers({"after": "poweroff"})) == "poweroff"
    with pytest.raises(UsageError, match="'after' must be one of shell, reboot, poweroff"):
        after_restore(Answers({"after": "halt"}))


def test_result_lines() -> None:
    report = RestoreReport(host="web1", point_id="ab" * 16, started=10.0, finished=22.34)
    report.volumes.append(VolumeReport("vda:p1", "/dev/vda", 0, 4 * MIB, written=3 * MIB,
                                       zeroed=MIB))
    assert auto.done_line(report) == (f"CDP-RESTORE-DONE ok point={'ab' * 16} "
                                      f"bytes={4 * MIB} seconds=12.3")
    assert failed_line(SafetyError("refusing target /dev/sda:\n it is the boot medium")) == \
        "CDP-RESTORE-DONE failed exit=11 reason=refusing target /dev/sda: it is the boot medium"
    assert failed_line(KeyError("x")) == "CDP-RESTORE-DONE failed exit=1 reason='x'"


def test_fetch_gives_up_on_404(tmp_path: Path, http_dir: tuple[str, Path]) -> None:
    url, _ = http_dir
    with pytest.raises(ConnectionFailed, match=r"cannot fetch .*/missing.json: HTTP 404"):
        auto.fetch(AutoRun(f"{url}/missing.json", True), None, tmp_path / "a", pause=0)


@pytest.fixture
def scene(repo_host: dict[str, Any], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A point of a GPT image on the real server, a target full of stale bytes, answers
    that restore one onto the other, and recorders for power actions."""
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    make_source(source, "gpt")
    point = point_of(repo_host, source)
    target.write_bytes(b"\xa5" * (64 * MIB))
    server = repo_host["server"]
    answers = {"server": server.url, "ca": str(server.ca_path), "token": repo_host["token"],
               "host": "web1", "passphrase": PASS, "map": {"vda.img": str(target)},
               "yes": True}
    powered: list[str] = []
    monkeypatch.setattr(cli, "power", powered.append)
    monkeypatch.setattr(auto, "FETCHED", tmp_path / "fetched" / "answers")
    return {"source": source, "target": target, "point": point, "answers": answers,
            "powered": powered, "tmp": tmp_path}


def run_auto(tmp: Path, cmdline: str) -> Any:
    path = tmp / "cmdline"
    path.write_text(cmdline + "\n")
    return CliRunner().invoke(cli.cli, ["auto", "--cmdline", str(path)])


def test_without_cdp_auto_nothing_is_written(scene: dict[str, Any]) -> None:
    answers = scene["tmp"] / "answers.json"
    answers.write_text(json.dumps({**scene["answers"], "after": "reboot"}))
    before = digest(scene["target"])
    result = run_auto(scene["tmp"], f"console=ttyS0 ip=dhcp cdp.answers={answers}")
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output and "CDP-RESTORE-DONE" not in result.output
    assert digest(scene["target"]) == before and scene["powered"] == []


def test_answers_from_a_url_restore_and_power_off(scene: dict[str, Any],
                                                  http_dir: tuple[str, Path]) -> None:
    url, root = http_dir
    (root / "web1.json").write_text(json.dumps({**scene["answers"], "after": "poweroff"}))
    result = run_auto(scene["tmp"], f"ip=dhcp cdp.auto=1 cdp.answers={url}/web1.json")
    assert result.exit_code == 0, result.output
    done = [line for line in result.output.splitlines() if line.startswith("CDP-RESTORE-")]
    assert len(done) == 1
    fields = dict(w.split("=", 1) for w in done[0].split()[2:])
    assert done[0].startswith("CDP-RESTORE-DONE ok ")
    assert fields["point"] == scene["point"].point_id
    assert int(fields["bytes"]) > 0 and float(fields["seconds"]) >= 0
    assert "-> " in result.output  # the engine's progress, as `rescue restore` prints it
    check_equal(scene["source"], scene["target"])
    assert scene["powered"] == ["poweroff"]
    assert (scene["tmp"] / "fetched" / "answers.json").stat().st_mode & 0o077 == 0


def test_failure_is_one_line_and_stays_at_the_shell(scene: dict[str, Any]) -> None:
    """Without "yes": true the restore is refused (cdp.auto=1 alone is not enough), and a
    failed restore never reboots, whatever the answers say."""
    answers = scene["tmp"] / "answers.json"
    doc = {**scene["answers"], "after": "reboot"}
    del doc["yes"]
    answers.write_text(json.dumps(doc))
    before = digest(scene["target"])
    result = run_auto(scene["tmp"], f"cdp.auto=1 cdp.answers={answers}")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "CDP-RESTORE-DONE failed exit=2 reason=refusing to write without confirmation: add "
        '--yes (or "yes": true in the answers file), or use --dry-run')
    assert digest(scene["target"]) == before and scene["powered"] == []


def test_kernel_point_wins_and_unknown_point_fails(scene: dict[str, Any]) -> None:
    answers = scene["tmp"] / "answers.json"
    answers.write_text(json.dumps(scene["answers"]))
    result = run_auto(scene["tmp"], f"cdp.auto=1 cdp.answers={answers} cdp.point=ffff0000")
    assert result.exit_code == 7, result.output
    assert result.output.splitlines()[-1].startswith("CDP-RESTORE-DONE failed exit=7 reason=")
    result = run_auto(scene["tmp"], "cdp.auto=1")
    assert result.output.splitlines()[-1] == (
        "CDP-RESTORE-DONE failed exit=2 reason=cdp.auto=1 needs cdp.answers=URL|path: an "
        'answers file with the target map and "yes": true')


# --- review of the rescue's unattended path (2026-12-06) -------------------------------

@pytest.mark.parametrize("cmdline", ['cdp.medium="/dev/sdq"', '"cdp.medium=/dev/sdq"',
                                     'quiet root="/dev/sdq"'])
def test_a_quoted_boot_medium_is_still_off_limits(cmdline: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/cmdline keeps the quotes the kernel removes when it parses: discovery split
    it at blanks and took `"/dev/sdq"` for no device, so the stick named by a quoted
    cdp.medium= (as bootopts reads it: /dev/sdq) was a restore target like any disk."""
    assert parse_cmdline(cmdline).medium in ("/dev/sdq", None)
    monkeypatch.setattr(discover, "_proc_lines", lambda path: (
        [cmdline.split()] if path == "/proc/cmdline" else []))
    assert discover.rescue_medium_names() == {"sdq"}


@pytest.mark.parametrize(("name", "text"), [
    ("a.yaml", "passphrase: 73917246\ntoken: t\n"),  # YAML reads an unquoted number as one
    ("a.json", '{"token": 55501234567, "host": "web1"}'),
    ("a.json", '{"passphrase": ["horse", "73917246"]}'),
])
def test_a_secret_of_the_wrong_type_is_not_printed(name: str, text: str,
                                                    scene: dict[str, Any]) -> None:
    """A passphrase or token of the wrong type was refused (good) with its value in the
    message, which `rescue auto` prints on every console and into /run/cdp/auto.log."""
    answers = scene["tmp"] / name
    answers.write_text(text)
    result = run_auto(scene["tmp"], f"cdp.auto=1 cdp.answers={answers}")
    assert result.exit_code == 2
    last = result.output.splitlines()[-1]
    assert last.startswith("CDP-RESTORE-DONE failed exit=2 reason=answers file")
    assert "must be a string" in last
    for secret in ("73917246", "55501234567"):
        assert secret not in result.output


def test_a_missing_boot_ca_is_a_usage_error(tmp_path: Path) -> None:
    """cdp.ca= naming no file: requests raised a bare OSError ("Could not find a suitable
    TLS CA certificate bundle"), so `rescue auto` failed with exit 1 ("other error")
    instead of 2 (usage: a bad option), and without saying which option."""
    with pytest.raises(UsageError, match=r"cdp\.ca=/nonexistent/ca\.pem"):
        auto.fetch(AutoRun("https://127.0.0.1:9/a.json", True), "/nonexistent/ca.pem",
                   tmp_path / "a", tries=1, pause=0)


def test_malformed_baked_defaults_end_in_a_result_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/etc/cdp/defaults.json was read before the `try`: a malformed one was a traceback
    (exit 1) and no CDP-RESTORE-DONE line, which the init and tests wait for."""
    defaults = tmp_path / "defaults.json"
    defaults.write_text('{"server": "https://s"')
    monkeypatch.setattr(bootopts, "DEFAULTS_FILE", defaults)
    result = run_auto(tmp_path, f"cdp.auto=1 cdp.answers={tmp_path}/a.json")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    last = result.output.splitlines()[-1]
    assert last.startswith(f"CDP-RESTORE-DONE failed exit=2 reason={defaults} (the image's "
                           "baked boot defaults) is unreadable or not valid JSON: ")
    assert "Traceback" not in result.output


def test_a_failed_reboot_after_the_ok_line_is_a_message(scene: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """`"after": "reboot"` whose command fails (no reboot tool, not permitted) was an
    uncaught CommandFailed after the ok line: a traceback on every console, exit 1."""
    def power(action: str) -> None:
        raise CommandFailed([action, "-f"], 1, f"{action}: Operation not permitted")

    monkeypatch.setattr(cli, "power", power)
    answers = scene["tmp"] / "answers.json"
    answers.write_text(json.dumps({**scene["answers"], "after": "reboot"}))
    result = run_auto(scene["tmp"], f"cdp.auto=1 cdp.answers={answers}")
    assert result.exit_code == 10 and isinstance(result.exception, SystemExit)
    lines = result.output.splitlines()
    assert any(line.startswith("CDP-RESTORE-DONE ok ") for line in lines)
    assert lines[-1] == ("rescue auto: error: the restore succeeded, but reboot failed: "
                         "command failed (exit 1): reboot -f: reboot: Operation not "
                         "permitted")


def test_answers_url_secrets_are_not_echoed(tmp_path: Path,
                                            http_dir: tuple[str, Path]) -> None:
    """cdp.answers= was echoed as given ("answers from ...", the fetch failure): its
    user:password@ and a ?token= query reached every console and /run/cdp/auto.log."""
    url, _ = http_dir
    assert auto.shown("https://u:pw@h:8443/a.json?token=s3cr3t#x") == "https://***@h:8443/a.json?***#x"
    assert auto.shown("http://h/a.json") == "http://h/a.json"
    assert auto.shown("/etc/cdp/answers.json") == "/etc/cdp/answers.json"
    secret_url = url.replace("://", "://operator:pw-s3cr3t@") + "/missing.json?token=t0k3n"
    result = run_auto(tmp_path, f"cdp.auto=1 cdp.answers={secret_url}")
    assert result.exit_code == 9, result.output
    shown = url.replace("://", "://***@") + "/missing.json?***"
    assert f"answers from {shown}" in result.output
    assert result.output.splitlines()[-1] == (
        f"CDP-RESTORE-DONE failed exit=9 reason=cannot fetch the answers file {shown}: "
        "HTTP 404")
    with pytest.raises(ConnectionFailed) as err:  # requests' own message quotes the URL
        auto.fetch(AutoRun("http://operator:pw-s3cr3t@127.0.0.1:9/a.json?token=t0k3n", True),
                   None, tmp_path / "a", tries=1, pause=0)
    assert "127.0.0.1" in str(err.value)
    for text in (result.output, str(err.value)):
        assert "pw-s3cr3t" not in text and "t0k3n" not in text


def test_the_report_path_is_named_before_the_result_line(scene: dict[str, Any]) -> None:
    """The restore report (in RAM under /run on a real rescue system) was never named, so
    after `"after": "reboot"` it was gone without anyone knowing it had existed."""
    answers = scene["tmp"] / "answers.json"
    answers.write_text(json.dumps({**scene["answers"], "after": "reboot"}))
    result = run_auto(scene["tmp"], f"cdp.auto=1 cdp.answers={answers}")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1].startswith("CDP-RESTORE-DONE ok ")
    (report,) = scene["tmp"].glob("rescue-web1-*.report.json")  # next to the image target
    assert lines[-2] == f"rescue auto: restore report in {report}"
    assert json.loads(report.read_text())["ok"] is True
    assert "saved_to" not in json.loads(report.read_text())
    assert scene["powered"] == ["reboot"]


def test_fetch_waits_for_a_busy_or_starting_web_server(tmp_path: Path) -> None:
    """429 and 503 are asked again (a web server starting, a rate limit), as is a network
    that is not up yet; the file arrives once the server answers."""
    import http.server
    import threading

    answers = [429, 503, 200]
    served: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = answers[len(served)]
            served.append(code)
            body = b'{"yes": true}' if code == 200 else b"busy"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.json"
        path = auto.fetch(AutoRun(url, True), None, tmp_path / "a", pause=0)
    finally:
        server.shutdown()
    assert served == [429, 503, 200]
    assert Path(path).read_text() == '{"yes": true}'
