"""Connect screen: each bad input gives its own plain-words error dialog; an unknown
certificate is shown by fingerprint and must be trusted before the token is sent."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from rescue.bootopts import BootOptions
from rescue.tui.screens.connect import ConnectScreen
from rescue.tui.screens.dialogs import ConfirmDialog, MessageDialog
from rescue.tui.screens.points import PointsScreen

from .conftest import PASS, Env
from .pilot import connect, settle, text, type_text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("case", ["unreachable", "tls-mismatch", "bad-token", "wrong-passphrase",
                                  "missing-ca"])
def test_each_bad_input_has_its_own_error(env: Env, case: str) -> None:
    boot = BootOptions(server=env.url, token=env.token, ca=env.ca)
    kw: dict[str, Any] = {}
    passphrase = PASS
    if case == "unreachable":
        boot = BootOptions(server=f"https://127.0.0.1:{closed_port()}", token=env.token)
    elif case == "tls-mismatch":
        boot = BootOptions(server=env.url, token=env.token)
        kw["fingerprint"] = "ab" * 32
    elif case == "missing-ca":
        boot = BootOptions(server=env.url, token=env.token, ca=str(env.tmp / "no-ca.pem"))
    elif case == "bad-token":
        boot = BootOptions(server=env.url, token="not-a-token", ca=env.ca)
    else:
        passphrase = "not the passphrase"
    expected = {"unreachable": "Server unreachable", "tls-mismatch": "TLS mismatch",
                "bad-token": "Bad token", "wrong-passphrase": "Wrong passphrase",
                "missing-ca": "Usage error"}[case]

    async def scenario() -> None:
        app = env.app(boot=boot, **kw)
        async with app.run_test(size=(80, 24)) as pilot:
            await connect(pilot, passphrase)
            assert isinstance(app.screen, MessageDialog)
            assert text(pilot, "#dialog-title") == expected
            body = text(pilot, "#dialog-text")
            if case == "tls-mismatch":
                assert f"has fingerprint {env.fingerprint}, but {'ab' * 32} was expected" in body
            if case == "unreachable":
                assert "cannot reach 127.0.0.1:" in body
            if case == "missing-ca":
                assert body.startswith(f"CA certificate {env.tmp / 'no-ca.pem'}: No such file "
                                       "or directory: correct the CA file")
            await pilot.press("enter")  # closes the dialog, back on the form
            assert isinstance(app.screen, ConnectScreen)
            assert text(pilot, "#status") == "not connected"
    asyncio.run(scenario())


def test_unknown_certificate_is_shown_and_must_be_trusted(env: Env) -> None:
    async def scenario() -> None:
        app = env.app(boot=BootOptions(server=env.url, token=env.token))
        async with app.run_test(size=(80, 24)) as pilot:
            await connect(pilot, PASS)
            assert isinstance(app.screen, ConfirmDialog)
            assert env.fingerprint in text(pilot, "#dialog-text")
            await pilot.press("n")
            assert isinstance(app.screen, ConnectScreen)
            assert text(pilot, "#status") == "not connected: the certificate was not trusted"
            assert env.fingerprint[:32] in text(pilot, "#cert")
            await pilot.press("ctrl+n")
            await settle(pilot)
            await pilot.press("y")
            await settle(pilot)
            assert isinstance(app.screen, PointsScreen)
            assert app.state.host == "web1"
    asyncio.run(scenario())


def test_pinned_fingerprint_connects_without_asking(env: Env) -> None:
    async def scenario() -> None:
        app = env.app(boot=BootOptions(server=env.url, token=env.token),
                      fingerprint=env.fingerprint.upper())
        async with app.run_test(size=(80, 24)) as pilot:
            await connect(pilot, PASS)
            assert isinstance(app.screen, PointsScreen)
    asyncio.run(scenario())


def test_missing_url_and_bad_url_are_refused(env: Env) -> None:
    async def scenario() -> None:
        app = env.app(boot=BootOptions())
        async with app.run_test(size=(80, 24)) as pilot:
            await connect(pilot, PASS)
            assert text(pilot, "#dialog-text") == \
                "enter the server URL, e.g. https://cdp.example.net:8443"
            await pilot.press("enter")
            app.screen.query_one("#url").focus()
            await type_text(pilot, "ftp://x")
            await pilot.press("ctrl+n")
            await settle(pilot)
            assert text(pilot, "#dialog-text") == \
                "server URL 'ftp://x': expected https://HOST[:PORT] or http://HOST[:PORT]"
            await pilot.press("enter")
            url = app.screen.query_one("#url")
            url.value = ""  # type: ignore[attr-defined]
            url.focus()
            await type_text(pilot, "https://127.0.0.1:abc")
            await pilot.press("ctrl+n")
            await settle(pilot)
            assert text(pilot, "#dialog-text") == \
                "server URL 'https://127.0.0.1:abc': expected https://HOST[:PORT] or " \
                "http://HOST[:PORT] (port 1 to 65535)"
    asyncio.run(scenario())
