"""Helpers for Textual pilot tests: wait for the app's worker threads, read widgets."""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot
from textual.widgets import Static

from rescue.tui.screens.connect import ConnectScreen


async def settle(pilot: Pilot[Any], rounds: int = 3000) -> None:
    """Let every worker (and the workers their results start) finish."""
    idle = 0
    for _ in range(rounds):
        await pilot.pause(0.02)
        idle = 0 if any(w.is_running for w in pilot.app.workers) else idle + 1
        if idle >= 3:  # results are posted to the UI after the thread ends
            return
    raise AssertionError("workers still running")


def text(pilot: Pilot[Any], selector: str) -> str:
    return str(pilot.app.screen.query_one(selector, Static).render())


async def type_text(pilot: Pilot[Any], value: str) -> None:
    await pilot.press(*["space" if c == " " else c for c in value])


async def enter_passphrase(pilot: Pilot[Any], passphrase: str) -> None:
    """From the network screen to the connect screen, the passphrase typed (not sent)."""
    await pilot.press("ctrl+n")
    assert isinstance(pilot.app.screen, ConnectScreen)
    pilot.app.screen.query_one("#passphrase").focus()
    await type_text(pilot, passphrase)


async def connect(pilot: Pilot[Any], passphrase: str) -> None:
    """From the network screen: connect with the screen's defaults and `passphrase`."""
    await enter_passphrase(pilot, passphrase)
    await pilot.press("enter")
    await settle(pilot)
