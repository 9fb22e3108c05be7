"""Keys pressed by accident or twice: quitting while a restore runs asks first (and a yes
stops the engine cleanly, resumable), Enter on the trust dialog does not trust the server,
and a second Enter while connecting does not connect twice."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from rescue import engine
from rescue.bootopts import BootOptions
from rescue.tui import session
from rescue.tui.screens.connect import ConnectScreen
from rescue.tui.screens.dialogs import ConfirmDialog
from rescue.tui.screens.restore import RestoreScreen

from .conftest import MIB, PASS, Env
from .pilot import connect, enter_passphrase, settle, text, type_text
from .test_map_restore import to_map_screen


def held_wipe(monkeypatch: Any) -> threading.Event:
    """The engine's wipe waits for the returned event: a restore that is still running."""
    gate = threading.Event()
    real = engine.target.wipe

    def wipe(path: str) -> None:
        gate.wait(30)
        real(path)
    monkeypatch.setattr(engine.target, "wipe", wipe)
    return gate


async def start_restore(pilot: Any) -> RestoreScreen:
    await to_map_screen(pilot)
    await pilot.press("enter", "enter", "ctrl+n")
    await settle(pilot, rounds=200)
    await type_text(pilot, "web1")
    await pilot.press("enter")
    await pilot.pause(0.3)
    screen = pilot.app.screen
    assert isinstance(screen, RestoreScreen) and screen.running
    return screen


def test_quit_while_restoring_asks_and_no_keeps_it_running(env: Env, monkeypatch: Any) -> None:
    gate = held_wipe(monkeypatch)

    async def scenario() -> None:
        app = env.app()
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await start_restore(pilot)
            await pilot.press("ctrl+q")
            assert app.is_running and isinstance(app.screen, ConfirmDialog)
            assert text(pilot, "#dialog-title") == "Stop the restore?"
            await pilot.press("enter")  # the default answer is No
            assert app.is_running and app.screen is screen and screen.running
            gate.set()
            await settle(pilot)
            assert screen.outcome == "done"
    asyncio.run(scenario())
    assert env.target.read_bytes()[MIB:5 * MIB] == env.source.read_bytes()[MIB:5 * MIB]


def test_quit_while_restoring_yes_stops_the_engine_cleanly(env: Env, monkeypatch: Any) -> None:
    gate = held_wipe(monkeypatch)

    async def scenario() -> None:
        app = env.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await start_restore(pilot)
            await pilot.press("ctrl+q")
            await pilot.press("y")
            gate.set()  # the wipe ends; the engine stops before the next step
            await pilot.pause(0.5)
            assert not app.is_running
    asyncio.run(scenario())  # returns once the restore thread has ended
    state = sorted(p.name for p in (env.tmp / "state").iterdir())
    assert [n.split(".", 1)[1] for n in state] == ["report.json", "state.json"]
    report = json.loads((env.tmp / "state" / state[0]).read_text())
    assert report["ok"] is False
    assert [(a["type"], a["status"]) for a in report["actions"]] == [("wipe", "done")]
    assert env.target.read_bytes() == b"\0" * (16 * MIB)  # wiped, no table written after


def test_enter_on_the_trust_dialog_does_not_trust(env: Env) -> None:
    async def scenario() -> None:
        app = env.app(boot=BootOptions(server=env.url, token=env.token))
        async with app.run_test(size=(80, 24)) as pilot:
            await connect(pilot, PASS)
            assert isinstance(app.screen, ConfirmDialog)
            await pilot.press("enter")  # a second Enter, typed ahead: the answer is No
            await settle(pilot)
            assert isinstance(app.screen, ConnectScreen)
            assert text(pilot, "#status") == "not connected: the certificate was not trusted"
    asyncio.run(scenario())


def test_second_enter_while_connecting_connects_once(env: Env, monkeypatch: Any) -> None:
    real = session.login

    def slow_login(*args: Any) -> session.Login:
        time.sleep(0.5)  # a slow link
        return real(*args)
    monkeypatch.setattr(session, "login", slow_login)

    async def scenario() -> None:
        app = env.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await enter_passphrase(pilot, PASS)
            await pilot.press("enter")
            await pilot.pause(0.1)
            await pilot.press("enter")  # nothing seems to happen: Enter again
            await settle(pilot)
            assert [type(s).__name__ for s in app.screen_stack[1:]] == \
                ["NetworkScreen", "ConnectScreen", "PointsScreen"]
            await pilot.press("escape")
            assert isinstance(app.screen, ConnectScreen)
    asyncio.run(scenario())


def test_the_restore_goes_on_while_the_shell_is_open(env: Env, monkeypatch: Any) -> None:
    """F2 during a restore: the UI is suspended, the restore is not (it used to wait for
    the UI at its next progress report, for as long as the shell stayed open)."""
    gate = held_wipe(monkeypatch)
    seen: list[bool] = []

    def shell() -> None:  # the operator looks around for a while, then types exit
        gate.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not list((env.tmp / "state").glob("*.report.json")):
            time.sleep(0.1)
        seen.append(bool(list((env.tmp / "state").glob("*.report.json"))))

    async def scenario() -> None:
        app = env.app(shell=shell)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await start_restore(pilot)
            await pilot.press("f2")
            assert seen == [True]  # the restore finished while the shell was open
            await settle(pilot)
            assert screen.outcome == "done"
            assert text(pilot, "#outcome").startswith("Restored 16.0 MiB of host web1 in ")
            assert "100.0% 16.0 MiB/16.0 MiB" in text(pilot, "#overall")
    asyncio.run(scenario())
