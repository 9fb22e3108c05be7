"""The TUI's pure helpers: progress text, the basic-terminal decision, confirmation words,
plain-words errors and target problems."""

from __future__ import annotations

import pytest

from cdpcore.errors import AuthError, ConnectionFailed, WrongKeyError
from cdpcore.layout import Disk, Partition
from rescue.discover import LocalDisk
from rescue.tui.session import TlsMismatch, explain
from rescue.tui.settings import is_basic_terminal
from rescue.tui.targets import automatic, problems
from rescue.tui.widgets.progress import Rate, bar_text, eta_text

MIB = 1024 * 1024


def test_progress_line_fits_80_columns_with_rate_and_eta() -> None:
    rate = Rate(began=100.0)
    assert rate.rate(10 * MIB, now=102.0) == 5 * MIB
    assert rate.eta(10 * MIB, 30 * MIB, now=102.0) == 4.0
    line = bar_text("vda.img:p2", 10 * MIB, 30 * MIB, 5 * MIB, 4.0)
    assert line == ("vda.img:p2   [###.......]  33.3% 10.0 MiB/30.0 MiB 5.0 MiB/s "
                    "ETA 00:04")
    assert len(bar_text("a-long-volume-name", 999 * 2**30, 999 * 2**30, 999 * MIB, 3600 * 99,
                        )) <= 78
    assert eta_text(None) == "--:--" and eta_text(3725) == "1:02:05"
    assert Rate(began=1.0, base=4).eta(4, 8, now=1.0) is None  # nothing measured yet


@pytest.mark.parametrize(("term", "tty", "basic"), [
    ("linux", "/dev/tty1", True), ("vt100", None, True), ("vt220", None, True),
    ("xterm-256color", "/dev/ttyS0", True), ("xterm-256color", "/dev/pts/3", False),
    ("screen-256color", None, False), ("linux-16color", None, True)])
def test_basic_terminals(term: str, tty: str | None, basic: bool) -> None:
    assert is_basic_terminal(term, tty) is basic


def test_errors_in_plain_words() -> None:
    assert explain(ConnectionFailed("cannot reach 10.0.0.1:443: No route to host"))[0] == \
        "Server unreachable"
    assert explain(ConnectionFailed("TLS check of https://x failed: bad cert"))[0] == \
        "TLS mismatch"
    assert explain(TlsMismatch("other fingerprint"))[0] == "TLS mismatch"
    assert explain(AuthError("GET /hosts: 401", 401)) == (
        "Bad token", "The server refused the token: type the host's restore token again.")
    assert explain(AuthError("GET /hosts: 403", 403))[1].startswith(
        "The server refused the token (it lacks the right role)")
    assert explain(WrongKeyError("wrong passphrase"))[0] == "Wrong passphrase"


def test_target_problems_name_every_reason() -> None:
    src = Disk(name="vda", size=64 * MIB, table="gpt",
               partitions=[Partition(number=1, start=2048, length=120000)])
    fine = LocalDisk(path="/dev/sdb", name="sdb", size=64 * MIB)
    assert problems(src, fine) == []
    bad = LocalDisk(path="/dev/sdc", name="sdc", size=32 * MIB, read_only=True,
                    logical_sector_size=4096, busy=["/dev/sdc1 is mounted on /"])
    assert problems(src, bad) == ["/dev/sdc1 is mounted on /", "read-only",
                                  "too small: 32.0 MiB, needs 59.6 MiB",
                                  "4096-byte sectors, the source had 512"]


def test_automatic_mapping_never_gives_one_disk_to_two_sources() -> None:
    """Two source disks of the same size, one local disk of that size: the engine refuses
    the automatic mapping; the map screen must not propose that disk for both."""
    sources = [Disk(name="vda", size=64 * MIB), Disk(name="vdb", size=64 * MIB)]
    local = [LocalDisk(path="/dev/sdb", name="sdb", size=64 * MIB)]
    found, why = automatic(sources, local)
    assert found == {}
    assert why == ["source disks vda, vdb all match /dev/sdb (same size and model): choose "
                   "their targets"]
