"""`rescue auto`, the unattended restore the rescue init runs for `cdp.auto=1`: its pure
decisions, and the command against a real server onto image files (answers from a path
and from an HTTP URL). Without cdp.auto=1 nothing is fetched or written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cdpcore.errors import ConnectionFailed, SafetyError, UsageError
from rescue import auto, cli
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
    return CliRunner().invoke(cli.main, ["auto", "--cmdline", str(path)])


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
