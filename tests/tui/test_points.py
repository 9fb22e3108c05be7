"""Hosts and points screen: the timeline, the date filter, the jumps (latest, latest
verified, before a time) and the layout tree, keyboard only."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from textual.widgets import DataTable, Input, Tree

from cdpcore.client import CdpClient
from cdpcore.points import local_time
from rescue.bootopts import BootOptions
from rescue.tui.screens.dialogs import AskDialog, MessageDialog
from rescue.tui.screens.points import PointsScreen

from .conftest import PASS, Env, make_point
from .pilot import connect, settle, text, type_text


def cursor_point(screen: Any) -> str:
    table = screen.query_one("#points", DataTable)
    return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)


def tree_labels(tree: Tree[str]) -> list[str]:
    out = []

    def walk(node: Any) -> None:
        for child in node.children:
            out.append(str(child.label))
            walk(child)
    walk(tree.root)
    return out


def test_timeline_jumps_filter_and_layout(env: Env) -> None:
    old = datetime(2026, 11, 20, 10, 0).timestamp()
    older = make_point(env.agent, "web1", env.codec, [str(env.source)], created=old)
    middle = env.points[0]
    CdpClient(env.url, env.admin_token, ca_path=env.ca).verify()  # both are now "ok"
    newest = make_point(env.agent, "web1", env.codec, [str(env.source)],
                        created=time.time() + 60)

    async def scenario() -> None:
        app = env.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await connect(pilot, PASS)
            screen = app.screen
            assert isinstance(screen, PointsScreen)
            table = screen.query_one("#points", DataTable)
            rows = [table.get_row_at(i) for i in range(table.row_count)]
            assert [r[0] for r in rows] == [local_time(p.created)[:16]
                                            for p in (newest, middle, older)]
            assert [r[3] for r in rows] == ["-", "ok", "ok"]
            assert rows[0][1] == "16.0 MiB"
            assert cursor_point(screen) == newest.point_id
            # The minutes-only timeline; the info line names the highlighted point exactly.
            assert text(pilot, "#info") == \
                f"web1: 3 of 3 points. Enter: restore {local_time(newest.created)}"
            labels = tree_labels(screen.query_one("#layout", Tree))
            assert labels[0] == "disk vda.img 16.0 MiB gpt"
            assert labels[1].startswith("1 4.0 MiB esp")
            assert labels[2].startswith("2 11.0 MiB")
            await pilot.press("v")
            assert cursor_point(screen) == middle.point_id
            assert text(pilot, "#info").endswith(f"Enter: restore {local_time(middle.created)}")
            await pilot.press("b")
            assert isinstance(app.screen, AskDialog)
            await type_text(pilot, "2026-11-21 00:00")
            await pilot.press("enter")
            assert cursor_point(screen) == older.point_id
            await pilot.press("b")
            await type_text(pilot, "2020-01-01")
            await pilot.press("enter")
            assert isinstance(app.screen, MessageDialog)
            assert text(pilot, "#dialog-text").startswith(
                "no recovery point of host 'web1' at or before 2020-01-01")
            await pilot.press("escape")
            await pilot.press("slash")
            assert app.focused is screen.query_one("#filter", Input)
            await type_text(pilot, "2026-11-20")
            await pilot.press("enter")
            assert table.row_count == 1 and cursor_point(screen) == older.point_id
            assert "web1: 1 of 3 points on 2026-11-20" in text(pilot, "#info")
            await pilot.press("l")  # the filter hid it: the jump clears the filter
            assert table.row_count == 3 and cursor_point(screen) == newest.point_id
    asyncio.run(scenario())


def test_admin_token_lists_hosts_and_opens_the_chosen_one(env: Env, cdp_server: Any) -> None:
    cdp_server.add_host("db1")  # a second host: the admin token sees both

    async def scenario(passphrase: str) -> Any:
        app = env.app(boot=BootOptions(server=env.url, token=env.admin_token, ca=env.ca))
        async with app.run_test(size=(80, 24)) as pilot:
            await connect(pilot, passphrase)
            screen = app.screen
            assert isinstance(screen, PointsScreen)
            hosts = screen.query_one("#hosts", DataTable)
            assert app.focused is hosts
            assert [str(hosts.get_row_at(i)[0]) for i in range(hosts.row_count)] == \
                ["db1", "web1"]
            await pilot.press("down", "enter")
            await settle(pilot)
            if isinstance(app.screen, MessageDialog):
                return text(pilot, "#dialog-title")
            assert app.state.host == "web1"
            await pilot.press("slash")
            await type_text(pilot, "lvb")  # letters go into the filter, not to the jumps
            assert screen.query_one("#filter", Input).value == "lvb"
            return screen.query_one("#points", DataTable).row_count
    assert asyncio.run(scenario(PASS)) == 1
    assert asyncio.run(scenario("wrong")) == "Wrong passphrase"
