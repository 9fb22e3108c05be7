"""Connect: server URL, token and passphrase (masked); the server certificate's SHA-256
fingerprint is shown and must be accepted when no CA vouches for it (trust on first use);
a pinned fingerprint that differs is refused before the token is sent."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Footer, Input, Label, Static

from cdpcore.errors import UsageError

from ...engine import Engine
from .. import session
from ..session import Login, ServerCert
from .base import RescueScreen
from .dialogs import ConfirmDialog

FIELDS = (("url", "Server URL", "https://cdp.example.net:8443", False),
          ("token", "Token", "restore token of the host", False),
          ("passphrase", "Passphrase", "key passphrase or recovery key CDP1-...", True),
          ("host", "Host", "empty: the token's only host", False),
          ("ca", "CA file", "empty: trust on first use", False))


class ConnectScreen(RescueScreen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+n", "connect", "Connect")]

    def __init__(self) -> None:
        super().__init__()
        # A connection under way: an impatient second Enter must not start another one
        # (its threads are not stopped: two trust dialogs, two points screens).
        self.connecting = False

    def compose(self) -> ComposeResult:
        yield Static("2/6 Connect to the CDP server", classes="title")
        with VerticalScroll():
            for key, label, hint, secret in FIELDS:
                with Horizontal(classes="row"):
                    yield Label(label, classes="label")
                    yield Input(placeholder=hint, password=secret, id=key, classes="field")
            yield Static("Certificate: not checked yet", id="cert", classes="hint")
            yield Static("", id="status", classes="hint")
            yield Button("Connect", id="connect")
        yield Footer()

    def on_mount(self) -> None:
        boot = self.rescue.settings.boot
        for key, value in (("url", boot.server), ("token", boot.token), ("host", boot.host),
                           ("ca", boot.ca)):
            self.query_one(f"#{key}", Input).value = value or ""
        first_empty = next((k for k, *_ in FIELDS
                            if not self.query_one(f"#{k}", Input).value), "url")
        self.query_one(f"#{first_empty}", Input).focus()

    def value(self, key: str) -> str:
        return self.query_one(f"#{key}", Input).value.strip()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter moves on to the next field, and connects from the passphrase field or
        once the URL, token and passphrase are all filled in."""
        filled = all(self.query_one(f"#{k}", Input).value for k in ("url", "token", "passphrase"))
        if event.input.id == "passphrase" or filled:
            self.action_connect()
        else:
            self.focus_next()

    def on_button_pressed(self) -> None:
        self.action_connect()

    def _status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    def action_connect(self) -> None:
        if self.connecting:
            return
        if not self.value("url"):
            self.show_error(UsageError("enter the server URL, e.g. https://cdp.example.net:8443"))
            return
        self.connecting = True
        self._status("connecting ...")
        self._probe(self.value("url"), self.value("ca") or None)

    @work(thread=True, exclusive=True, group="connect")
    def _probe(self, url: str, ca: str | None) -> None:
        try:
            cert = session.probe(url, ca)
            session.check_pin(cert, self.rescue.settings.fingerprint)
        except Exception as exc:  # every failure becomes a dialog, not a crash
            self.app.call_from_thread(self._failed, exc)
            return
        self.app.call_from_thread(self._probed, cert)

    def _probed(self, cert: ServerCert) -> None:
        fp = cert.fingerprint
        self.query_one("#cert", Static).update(
            "Certificate: plain HTTP, not encrypted" if fp is None else
            f"Certificate SHA-256: {fp[:32]}\n                    {fp[32:]}"
            + (" (trusted by CA)" if cert.trusted else ""))
        pinned = self.rescue.settings.fingerprint
        if cert.trusted or fp is None or pinned:
            self._login(pinned if pinned and not cert.trusted else None)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._login(fp)
            else:
                self.connecting = False
                self._status("not connected: the certificate was not trusted")
        self.app.push_screen(ConfirmDialog(
            "Trust this server?", f"No CA vouches for {cert.url}.\nIts certificate's SHA-256 "
            f"fingerprint is\n{fp}\nCompare it with the one the server's administrator gave "
            "you. Trust it?"), answer)

    def _login(self, fingerprint: str | None) -> None:
        self._status("logging in ...")
        self._do_login(self.value("url"), self.value("token"), self.value("ca") or None,
                       fingerprint, self.value("host"), self.query_one("#passphrase", Input).value)

    @work(thread=True, exclusive=True, group="connect")
    def _do_login(self, url: str, token: str, ca: str | None, fingerprint: str | None,
                  host: str, passphrase: str) -> None:
        try:
            login = session.login(url, token, ca, fingerprint)
            names = [h.name for h in login.hosts]
            if not host and len(names) == 1:
                host = names[0]
            if host and host not in names:
                raise UsageError(f"the token does not see host {host!r}; it sees: "
                                 + (", ".join(names) or "no host"))
            engine = session.open_engine(login.client, host, passphrase) if host else None
        except Exception as exc:  # every failure becomes a dialog, not a crash
            self.app.call_from_thread(self._failed, exc)
            return
        self.app.call_from_thread(self._connected, login, host, passphrase, engine)

    def _failed(self, exc: BaseException) -> None:
        self.connecting = False
        self._status("not connected")
        self.show_error(exc)

    def _connected(self, login: Login, host: str, passphrase: str,
                   engine: Engine | None) -> None:
        self.connecting = False
        state = self.rescue.state
        state.login, state.passphrase = login, passphrase
        state.host, state.engine = host, engine
        self._status(f"connected: {len(login.hosts)} host(s)")
        from .points import PointsScreen
        self.app.push_screen(PointsScreen())
