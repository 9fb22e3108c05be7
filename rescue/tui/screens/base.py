"""What every screen shares: typed access to the app's settings and state, and errors
shown in a dialog with plain words."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from textual.binding import Binding, BindingType
from textual.screen import Screen

from ..session import explain
from .dialogs import MessageDialog

if TYPE_CHECKING:
    from ..app import RescueApp


class RescueScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Back")]

    @property
    def rescue(self) -> RescueApp:
        return cast("RescueApp", self.app)

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()

    def show_error(self, exc: BaseException) -> None:
        title, text = explain(exc)
        self.app.push_screen(MessageDialog(title, text))
