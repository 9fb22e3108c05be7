"""Sizes as the CLIs and the TUI print them."""

from __future__ import annotations

from cdpcore.units import human


def test_sizes_take_the_unit_they_are_printed_in() -> None:
    assert [human(n) for n in (0, 1023, 1024, 1536, 1048575, 1048576, 5 * 2**40, 2**50)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "1.0 MiB", "1.0 MiB", "5.0 TiB", "1024.0 TiB"]
