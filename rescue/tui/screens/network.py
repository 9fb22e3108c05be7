"""Network: interfaces with link state and addresses; DHCP, static or none, with gateway,
DNS and VLAN, prefilled from the kernel command line (ip=, vlan=)."""

from __future__ import annotations

from typing import ClassVar, cast

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import Button, DataTable, Footer, Input, Label, RadioButton, RadioSet, Static

from cdpcore.errors import CdpError

from .. import netconf
from ..netconf import Mode, NetSettings
from .base import RescueScreen

MODES: tuple[Mode, ...] = ("dhcp", "static", "none")


class Choice(RadioButton):
    """A radio button drawn as (*) when chosen and ( ) when not: on a monochrome serial
    line the colour that tells Textual's buttons apart does not show."""

    BUTTON_LEFT = "("
    BUTTON_RIGHT = ")"

    @property
    def _button(self) -> Content:
        self.BUTTON_INNER = "*" if self.value else " "
        return super()._button


class NetworkScreen(RescueScreen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+n", "next", "Next (skip)"), Binding("f5", "apply", "Apply")]

    def compose(self) -> ComposeResult:
        yield Static("1/6 Network", classes="title")
        yield DataTable(id="ifaces", cursor_type="row")
        with VerticalScroll():
            with RadioSet(id="mode"):
                for mode in MODES:
                    yield Choice(mode.upper() if mode != "static" else "Static",
                                      id=f"mode-{mode}")
            for key, label, hint in (("iface", "Interface", "eth0"),
                                     ("address", "Address", "192.0.2.10/24"),
                                     ("gateway", "Gateway", "192.0.2.1"),
                                     ("dns", "DNS", "192.0.2.53 (space-separated)"),
                                     ("vlan", "VLAN ID", "none")):
                with Horizontal(classes="row"):
                    yield Label(label, classes="label")
                    yield Input(placeholder=hint, id=key, classes="field")
            yield Static("", id="net-error", classes="error")
            yield Static("", id="net-log", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Apply", id="apply")
                yield Button("Next", id="next")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#ifaces", DataTable)
        table.add_columns("Interface", "Link", "MAC", "Addresses")
        try:
            ifaces = netconf.interfaces()
        except CdpError as exc:
            ifaces = []
            self._error(f"cannot list interfaces: {exc}")
        for i in ifaces:
            table.add_row(i.name, i.state + ("" if i.carrier else " (no carrier)"), i.mac,
                          " ".join(i.addresses) or "-")
        cfg = netconf.from_boot(self.rescue.settings.boot, ifaces)
        cast(RadioButton, self.query_one(f"#mode-{cfg.mode}")).value = True
        for key in ("iface", "address", "gateway", "dns", "vlan"):
            self.query_one(f"#{key}", Input).value = getattr(cfg, key)
        self.query_one("#mode", RadioSet).focus()

    def form(self) -> NetSettings:
        pressed = self.query_one("#mode", RadioSet).pressed_button
        mode = cast(Mode, (pressed.id or "mode-dhcp")[5:]) if pressed else "none"
        values = {k: self.query_one(f"#{k}", Input).value.strip()
                  for k in ("iface", "address", "gateway", "dns", "vlan")}
        return NetSettings(mode=mode, **values)

    def _error(self, text: str) -> None:
        self.query_one("#net-error", Static).update(text)

    def action_apply(self) -> None:
        self._error("")
        try:
            netconf.validate(self.form())
        except CdpError as exc:
            self._error(str(exc))
            return
        self.query_one("#net-log", Static).update("applying ...")
        self._apply(self.form())

    @work(thread=True, exclusive=True)
    def _apply(self, cfg: NetSettings) -> None:
        try:
            lines = netconf.apply(cfg, self.rescue.settings.dry_run_network)
        except (CdpError, OSError) as exc:
            self.app.call_from_thread(self._error, str(exc))
            return
        self.app.call_from_thread(self._applied, lines)

    def _applied(self, lines: list[str]) -> None:
        self.query_one("#net-log", Static).update("\n".join(lines) or "nothing to do")

    def action_next(self) -> None:
        from .connect import ConnectScreen
        self.app.push_screen(ConnectScreen())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self.action_apply()
        else:
            self.action_next()
