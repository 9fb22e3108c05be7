"""The systemd units shipped with the agent and the server, checked by systemd itself
(`systemd-analyze verify`): a misspelt directive is only a warning in the journal, and
the unit then runs without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted([*REPO.glob("hotcopy/*.service"), *REPO.glob("cdp_server/*.service"),
                *REPO.glob("cdp_server/*.timer")])


def test_the_units_are_found() -> None:
    assert [u.name for u in UNITS] == [
        "cdp-server-maintenance.service", "cdp-server-maintenance.timer",
        "cdp-server-verify.service", "cdp-server-verify.timer", "cdp-server.service",
        "cdp-agent-era@.service", "cdp-agent.service"]


def test_systemd_accepts_every_unit_without_a_warning(tmp_path: Path) -> None:
    """Verified together (the timers name their services), with the programs where this
    suite installed them instead of /usr/local/bin, which verify checks for."""
    bindir = Path(sys.executable).parent
    for unit in UNITS:
        (tmp_path / unit.name).write_text(
            unit.read_text().replace("/usr/local/bin/", f"{bindir}/"))
    out = subprocess.run(["systemd-analyze", "verify", *sorted(p.name for p in tmp_path.iterdir())],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
