"""Map disks (targets too small or busy are shown but cannot be picked), review, and a
restore that fails (target became busy) then resumes; the basic look and the shell key."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Button, OptionList

from rescue.tui.screens.dialogs import MessageDialog
from rescue.tui.screens.mapping import MapScreen
from rescue.tui.screens.points import PointsScreen
from rescue.tui.screens.restore import RestoreScreen
from rescue.tui.screens.review import ReviewScreen

from .conftest import MIB, PASS, Env
from .pilot import connect, settle, text, type_text


@pytest.fixture
def loop_of() -> Iterator[Any]:
    attached: list[str] = []

    def attach(path: Path) -> str:
        dev = subprocess.run(["losetup", "-f", "--show", str(path)], check=True,
                             capture_output=True, text=True).stdout.strip()
        attached.append(dev)
        return dev

    def detach(dev: str) -> None:
        subprocess.run(["losetup", "-d", dev], check=True)
        attached.remove(dev)

    attach.detach = detach  # type: ignore[attr-defined]
    yield attach
    for dev in attached:
        subprocess.run(["losetup", "-d", dev], check=False)


async def to_map_screen(pilot: Any) -> MapScreen:
    await connect(pilot, PASS)
    assert isinstance(pilot.app.screen, PointsScreen)
    await pilot.press("enter")
    await settle(pilot)
    assert isinstance(pilot.app.screen, MapScreen)
    return pilot.app.screen


def test_unusable_targets_are_shown_but_not_selectable(env: Env, loop_of: Any) -> None:
    small, busy = env.tmp / "small.img", env.tmp / "busy.img"
    small.write_bytes(b"\0" * 8 * MIB)
    busy.write_bytes(b"\0" * 16 * MIB)
    dev = loop_of(busy)

    async def scenario() -> None:
        app = env.app(targets=[str(small), str(busy), str(env.target)])
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await to_map_screen(pilot)
            opts = screen.query_one("#targets", OptionList)
            shown = [(str(opts.get_option_at_index(i).prompt),
                      opts.get_option_at_index(i).disabled) for i in range(opts.option_count)]
            assert [s[1] for s in shown] == [True, True, False]
            assert shown[0][0].endswith("NOT SELECTABLE: too small: 8.0 MiB, needs 16.0 MiB")
            assert shown[1][0].endswith(f"NOT SELECTABLE: {busy} is attached to {dev}")
            await pilot.press("ctrl+n")
            assert isinstance(app.screen, MessageDialog)
            assert text(pilot, "#dialog-text") == "choose a target for source disk vda.img"
            await pilot.press("enter")
            await pilot.press("enter")  # to the targets: only new.img can be highlighted
            await pilot.press("up", "up", "enter")
            assert screen.chosen["vda.img"].path == str(env.target)
            assert screen.reasons["vda.img"] == "chosen by you"
            await pilot.press("r", "v", "g", "i")
            assert text(pilot, "#map-info").startswith(
                "resize: grow-last (r)  verify: read-back (v)  grow filesystems: no (g)\n"
                "reinstall bootloader: yes (i)   ctrl+n: review the plan")
            await pilot.press("u")
            assert "unmapped: vda.img" in text(pilot, "#map-info")
    asyncio.run(scenario())


def test_failed_restore_offers_resume_and_succeeds(env: Env, loop_of: Any) -> None:
    before = env.target.read_bytes()

    async def scenario() -> None:
        app = env.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await to_map_screen(pilot)
            await pilot.press("enter", "enter", "ctrl+n")
            await settle(pilot)
            assert isinstance(app.screen, ReviewScreen)
            dev = loop_of(env.target)  # someone attaches the target after the review
            await type_text(pilot, "web1")
            await pilot.press("enter")
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, RestoreScreen) and screen.outcome == "failed"
            assert text(pilot, "#outcome").startswith(
                f"Restore failed: refusing to write {env.target}: {env.target} is attached "
                f"to {dev}")
            assert [b.id for b in screen.query(Button)] == ["resume", "another", "shell"]
            assert env.target.read_bytes() == before  # nothing was written
            loop_of.detach(dev)
            await pilot.press("enter")  # Resume has the focus
            await settle(pilot)
            assert screen.outcome == "done"
            assert [b.id for b in screen.query(Button)] == ["reboot", "poweroff", "shell"]
            await pilot.press("tab", "enter")
            assert env.power_calls == ["poweroff"]
            await pilot.press("ctrl+z")
            assert env.shell_calls == ["shell"]
    asyncio.run(scenario())
    assert env.target.read_bytes()[MIB:5 * MIB] == env.source.read_bytes()[MIB:5 * MIB]


def test_another_point_after_failure_goes_back_to_the_timeline(env: Env, loop_of: Any) -> None:
    async def scenario() -> None:
        app = env.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await to_map_screen(pilot)
            await pilot.press("enter", "enter", "ctrl+n")
            await settle(pilot)
            loop_of(env.target)
            await type_text(pilot, "new.img")
            await pilot.press("enter")
            await settle(pilot)
            await pilot.press("tab", "enter")  # "Another point"
            assert isinstance(app.screen, PointsScreen)
    asyncio.run(scenario())


def test_basic_look_on_the_linux_console(env: Env) -> None:
    async def scenario() -> None:
        app = env.app(basic=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await to_map_screen(pilot)
            assert app.theme == "ansi-dark" and app.ansi_color
            assert app.screen.query_one("#targets").styles.scrollbar_size_vertical == 1
            await pilot.press("enter", "enter", "ctrl+n")
            await settle(pilot)
            inp = app.screen.query_one("#confirm")
            assert inp.styles.border.top[0] == "ascii"
    asyncio.run(scenario())


def test_the_restore_runs_the_plan_its_review_showed(env: Env) -> None:
    """Two plannings can finish in either order (ctrl+n twice, options changed between:
    the planning threads are not stopped): a review screen left below a later one must
    still start the plan it shows, not whichever planning finished last."""
    async def scenario() -> None:
        app = env.app()
        async with app.run_test(size=(80, 24)) as pilot:
            map_screen = await to_map_screen(pilot)
            await pilot.press("enter", "enter", "ctrl+n")
            await settle(pilot)
            first = app.screen
            assert isinstance(first, ReviewScreen)
            shown = first.plan
            assert "verify: read-back" not in text(pilot, "#plan-text")
            map_screen.verify = "read-back"  # a later planning, with another option
            map_screen._plan({"vda.img": str(env.target)})
            await settle(pilot)
            assert isinstance(app.screen, ReviewScreen) and app.screen is not first
            await pilot.press("escape")
            assert app.screen is first
            await type_text(pilot, "web1")
            await pilot.press("enter")
            await settle(pilot)
            restore = app.screen
            assert isinstance(restore, RestoreScreen) and restore.outcome == "done"
            assert restore.plan is shown and restore.plan.verify == "blocks"
    asyncio.run(scenario())
