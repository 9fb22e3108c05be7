"""The whole restore, keyboard only, against a real CDP server and a real recovery point,
onto an image file checked byte for byte."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rescue.tui.screens.connect import ConnectScreen
from rescue.tui.screens.mapping import MapScreen
from rescue.tui.screens.network import NetworkScreen
from rescue.tui.screens.points import PointsScreen
from rescue.tui.screens.restore import RestoreScreen
from rescue.tui.screens.review import ReviewScreen

from .conftest import MIB, PASS, Env, sh
from .pilot import settle, text, type_text


def table(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sh("sfdisk", "--json", str(path)))["partitiontable"]
    doc.pop("device")  # the file's own name, also in each partition's node
    for part in doc["partitions"]:
        part.pop("node")
    return doc


def test_keyboard_only_restore_is_byte_exact(env: Env) -> None:
    async def scenario() -> None:
        app = env.app()
        async with app.run_test(size=(80, 24)) as pilot:
            assert isinstance(app.screen, NetworkScreen)
            await pilot.press("ctrl+n")
            assert isinstance(app.screen, ConnectScreen)
            assert app.focused is not None and app.focused.id == "passphrase"
            await type_text(pilot, PASS)
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, PointsScreen)
            assert "web1: 1 of 1 points" in text(pilot, "#info")
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, MapScreen)
            await pilot.press("enter", "enter")  # source row -> target list -> pick new.img
            assert app.screen.chosen["vda.img"].path == str(env.target)
            await pilot.press("ctrl+n")
            await settle(pilot)
            assert isinstance(app.screen, ReviewScreen)
            assert f"wipe {env.target} (16.0 MiB)" in text(pilot, "#plan-text")
            # In the map screen's words, not the engine's "--map" (a CLI option).
            assert f"vda.img -> {env.target} (16.0 MiB, chosen by you)" in \
                text(pilot, "#plan-text")
            await type_text(pilot, "vda.img")
            await pilot.press("enter")
            assert text(pilot, "#confirm-error") == \
                "'vda.img' does not name the target: nothing was written"
            assert isinstance(app.screen, ReviewScreen)
            await pilot.press("ctrl+u")
            await type_text(pilot, "new.img")
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, RestoreScreen)
            assert app.screen.outcome == "done"
            assert text(pilot, "#outcome").startswith("Restored 16.0 MiB of host web1 in ")
            assert "100.0% 16.0 MiB/16.0 MiB" in text(pilot, "#overall")
            await pilot.press("f2")  # a shell, one key away
            assert env.shell_calls == ["shell"]
            await pilot.press("enter")  # the focused first choice: Reboot
            assert env.power_calls == ["reboot"]
    asyncio.run(scenario())
    # The partition table is rewritten by the engine (same GUIDs, types, names, bounds);
    # the boot code and every partition's bytes are copied exactly.
    assert table(env.source) == table(env.target)
    src, dst = env.source.read_bytes(), env.target.read_bytes()
    assert len(dst) == 16 * MIB
    assert src[:440] == dst[:440]
    for part in table(env.source)["partitions"]:
        start, size = part["start"] * 512, part["size"] * 512
        assert src[start:start + size] == dst[start:start + size]
