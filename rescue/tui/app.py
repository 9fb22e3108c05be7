"""The rescue TUI application: screens in the order of a restore (network, connect,
point, disk map, review, restore), a shell one key away (F2 or ctrl+z), and a basic look
(16 ANSI colours, ASCII borders) on the Linux console and serial lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from cdpcore.api import PointInfo

from ..engine import Engine
from .screens.dialogs import ConfirmDialog
from .session import Login
from .settings import Settings
from .widgets.ascii import use_ascii_scrollbars


@dataclass
class State:
    """What the operator chose so far; each screen reads and fills its part."""

    login: Login | None = None
    passphrase: str = ""
    host: str = ""
    engine: Engine | None = None
    point: PointInfo | None = None


class RescueApp(App[None]):
    CSS_PATH = Path(__file__).with_name("rescue.tcss")
    TITLE = "CDP rescue"
    # The palette is one more thing to learn under stress, and its footer glyph is not ASCII.
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f2", "shell", "Shell", priority=True),
        Binding("ctrl+z", "shell", "Shell", show=False, priority=True),
    ]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.basic = settings.basic_mode()
        # ansi_color keeps the terminal's own 16 colours instead of true-colour shades.
        super().__init__(ansi_color=self.basic or None)
        self.state = State()

    def on_mount(self) -> None:
        if self.basic:
            self.theme = "ansi-dark"
            self.add_class("-basic")
            use_ascii_scrollbars()
        from .screens.network import NetworkScreen
        self.push_screen(NetworkScreen())
        # A bad ip= or unreadable baked defaults: said here, or the operator never learns
        # why the server field is empty or the network down.
        for warning in self.settings.boot.warnings:
            self.notify(f"boot options: {warning}", severity="warning", timeout=60)

    async def action_quit(self) -> None:
        """ctrl+q (and what ctrl+c suggests). While a restore runs only after a yes: one
        key would otherwise leave the targets half-written, the engine still writing."""
        from .screens.restore import RestoreScreen
        running = next((s for s in self.screen_stack
                        if isinstance(s, RestoreScreen) and s.running), None)
        if running is None:
            self.exit()
            return
        if isinstance(self.screen, ConfirmDialog):
            return  # already asking

        def answer(yes: bool | None) -> None:
            if yes:
                running.stop()
                self.exit()
        self.push_screen(ConfirmDialog(
            "Stop the restore?", "A restore is running. Quitting stops it now: the target "
            "disks are left half-written, neither what was on them nor the recovery point. "
            "The resume state is kept: the same restore started again continues where it "
            "stopped.\nStop the restore and quit?"), answer)

    def action_shell(self) -> None:
        """Suspend the UI and give the terminal to a shell; the UI comes back after it."""
        if self.is_headless:
            self.settings.shell()
            return
        with self.suspend():
            self.settings.shell()
        self.refresh()


def create_app(settings: Settings | None = None) -> RescueApp:
    return RescueApp(settings or Settings())
