"""Running external tools: every way a tool can fail to start or finish is a
CommandFailed naming it, never an OSError from deep inside subprocess."""

from __future__ import annotations

import pytest

from cdpcore import runcmd
from cdpcore.errors import CommandFailed


def test_a_missing_tool_an_oversized_command_line_and_a_failure_are_command_failed() -> None:
    with pytest.raises(CommandFailed) as missing:
        runcmd.run(["no-such-tool-cdp"])
    assert missing.value.returncode == 127
    with pytest.raises(CommandFailed) as too_long:  # E2BIG: beyond the kernel's ARG_MAX
        runcmd.run(["true", *(["x" * 4096] * 1024)])
    assert too_long.value.returncode == 126 and "Argument list too long" in str(too_long.value)
    with pytest.raises(CommandFailed) as failed:
        runcmd.run(["sh", "-c", "echo broken >&2; exit 3"])
    assert (failed.value.returncode, failed.value.stderr) == (3, "broken\n")


def test_run_lines_reads_large_output_back_from_a_file_and_fails_like_run() -> None:
    lines = runcmd.run_lines(["seq", "1", "200000"])
    assert sum(1 for _ in lines) == 200000
    assert list(runcmd.run_lines(["cat"], input=b"a\nb\n")) == ["a\n", "b\n"]
    with pytest.raises(CommandFailed):
        list(runcmd.run_lines(["sh", "-c", "echo partial; exit 1"]))
