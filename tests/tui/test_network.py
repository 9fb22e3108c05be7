"""Network screen and its commands: interfaces from `ip -j addr`, the kernel command
line's ip=/vlan= prefilled, bad values refused with the field named, dry-run apply."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, RadioSet

from cdpcore.errors import UsageError
from rescue.bootopts import parse_cmdline
from rescue.tui import netconf
from rescue.tui.app import RescueApp
from rescue.tui.netconf import NetSettings
from rescue.tui.screens.connect import ConnectScreen
from rescue.tui.screens.network import Choice, NetworkScreen
from rescue.tui.settings import Settings

from .pilot import settle, text, type_text

CMDLINE = ("console=ttyS0,115200 ip=192.0.2.10::192.0.2.1:255.255.255.0:web1:eth0:none "
           "vlan=eth0.100:eth0 cdp.server=https://cdp.example.net:8443")


def app_with(cmdline: str) -> RescueApp:
    return RescueApp(Settings(boot=parse_cmdline(cmdline), dry_run_network=True,
                              discover=False, basic=False))


def test_interfaces_listed_and_boot_options_prefilled() -> None:
    kernel = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True,
                                       check=True).stdout)
    names = [link["ifname"] for link in kernel if link.get("link_type") != "loopback"]

    async def scenario() -> None:
        app = app_with(CMDLINE)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            assert isinstance(screen, NetworkScreen)
            table = screen.query_one("#ifaces", DataTable)
            assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == names
            assert screen.query_one("#mode", RadioSet).pressed_button.id == "mode-static"
            values = {k: screen.query_one(f"#{k}", Input).value
                      for k in ("iface", "address", "gateway", "dns", "vlan")}
            assert values == {"iface": "eth0", "address": "192.0.2.10/24",
                              "gateway": "192.0.2.1", "dns": "", "vlan": "100"}
            screen.query_one("#dns", Input).focus()
            await type_text(pilot, "192.0.2.53")
            await pilot.press("f5")
            await settle(pilot)
            assert text(pilot, "#net-log").splitlines() == [
                "would run: ip link set eth0 up",
                "would run: ip link add link eth0 name eth0.100 type vlan id 100",
                "would run: ip link set eth0.100 up",
                "would run: ip addr flush dev eth0.100",
                "would run: ip addr add 192.0.2.10/24 dev eth0.100",
                "would run: ip route replace default via 192.0.2.1 dev eth0.100",
                "would write /etc/resolv.conf: 192.0.2.53"]
            await pilot.press("ctrl+n")
            assert isinstance(app.screen, ConnectScreen)
            assert app.screen.query_one("#url", Input).value == "https://cdp.example.net:8443"
            await pilot.press("escape")
            assert isinstance(app.screen, NetworkScreen)
    asyncio.run(scenario())


def test_bad_gateway_is_refused_with_the_value_named() -> None:
    async def scenario() -> None:
        app = app_with(CMDLINE)
        async with app.run_test(size=(80, 24)) as pilot:
            gateway = app.screen.query_one("#gateway", Input)
            gateway.value = ""
            gateway.focus()
            await type_text(pilot, "192.0.2.300")
            await pilot.press("f5")
            await settle(pilot)
            assert text(pilot, "#net-error") == "gateway '192.0.2.300' is not an IP address"
            assert text(pilot, "#net-log") == ""
    asyncio.run(scenario())


def test_keyboard_switches_to_dhcp() -> None:
    async def scenario() -> None:
        app = app_with("ip=dhcp")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            assert screen.query_one("#mode", RadioSet).pressed_button.id == "mode-dhcp"
            assert app.focused is screen.query_one("#mode", RadioSet)
            await pilot.press("down", "enter")  # to Static and select it
            assert screen.form().mode == "static"
            # the mark, not only its colour, says which is chosen (monochrome serial)
            marks = {b.id: str(b.render())[:3] for b in screen.query(Choice)}
            assert marks == {"mode-dhcp": "( )", "mode-static": "(*)", "mode-none": "( )"}
            await pilot.press("up", "enter")
            screen.query_one("#iface", Input).value = "eth0"
            assert netconf.commands(screen.form()) == [
                ["ip", "link", "set", "eth0", "up"],
                ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "5", "-T", "2",
                 "-s", "/usr/share/cdp-rescue/udhcpc.script"]]
    asyncio.run(scenario())


def test_dhcp_uses_the_images_udhcpc_and_its_lease_script() -> None:
    """The image has no dhclient: DHCP is busybox udhcpc with the script the init uses."""
    [*_, dhcp] = netconf.commands(NetSettings("dhcp", "eth1"))
    assert dhcp[:2] == ["busybox", "udhcpc"]
    script = Path(__file__).resolve().parents[2] / "initramfs" / "udhcpc.script"
    assert dhcp[-2:] == ["-s", netconf.UDHCPC_SCRIPT] and script.is_file()
    assert netconf.UDHCPC_SCRIPT in (script.parent / "init").read_text()


def test_vlan_made_by_the_init_is_not_added_again() -> None:
    """vlan=eth0.100:eth0 makes eth0.100 at boot: Apply must not fail with "File exists"."""
    cfg = NetSettings("dhcp", "eth0", vlan="100")
    fresh = netconf.commands(cfg, existing=["eth0"])
    assert ["ip", "link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id",
            "100"] in fresh
    again = netconf.commands(cfg, existing=["eth0", "eth0.100"])
    assert again == [c for c in fresh if c[:3] != ["ip", "link", "add"]]
    assert again[:2] == [["ip", "link", "set", "eth0", "up"],
                         ["ip", "link", "set", "eth0.100", "up"]]


def test_apply_skips_an_existing_vlan(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(netconf.os, "listdir", lambda path: ["lo", "eth0", "eth0.100"])
    monkeypatch.setattr(netconf.runcmd, "run", lambda argv, **kw: ran.append(list(argv)))
    netconf.apply(NetSettings("static", "eth0", "192.0.2.10/24", vlan="100"), dry_run=False)
    assert ran == [["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "eth0.100", "up"],
                   ["ip", "addr", "flush", "dev", "eth0.100"],
                   ["ip", "addr", "add", "192.0.2.10/24", "dev", "eth0.100"]]


@pytest.mark.parametrize(("cfg", "message"), [
    (NetSettings("static", "eth0", "192.0.2.10"),
     "address '192.0.2.10': add the prefix length, e.g. /24"),
    (NetSettings("static", "eth0", "nonsense/24"),
     "address 'nonsense/24': expected ADDRESS/PREFIX, e.g. 192.0.2.10/24"),
    (NetSettings("dhcp", "eth0", vlan="5000"),
     "VLAN ID '5000': expected a number from 1 to 4094"),
    (NetSettings("dhcp", ""), "choose an interface"),
    (NetSettings("dhcp", "eth0", dns="192.0.2.53 dns.example"),
     "DNS server 'dns.example' is not an IP address"),
])
def test_invalid_settings(cfg: NetSettings, message: str) -> None:
    with pytest.raises(UsageError) as err:
        netconf.commands(cfg)
    assert str(err.value) == message


def test_none_mode_runs_nothing() -> None:
    assert netconf.apply(NetSettings("none"), dry_run=True) == []


def test_unreadable_baked_defaults_are_shown_and_the_console_still_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed /etc/cdp/defaults.json stopped the TUI with a traceback (the init then
    restarted it in a loop): the console comes up with the command line's options and
    says what is wrong with the file."""
    from rescue import bootopts
    from rescue.tui.settings import boot_options_from

    defaults = tmp_path / "defaults.json"
    defaults.write_text("{not json")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(CMDLINE)
    monkeypatch.setattr(bootopts, "DEFAULTS_FILE", defaults)
    with pytest.raises(UsageError, match=r"defaults\.json \(the image's baked boot defaults\)"):
        boot_options_from(str(cmdline))
    boot = boot_options_from(str(cmdline), lenient=True)
    assert boot.server == "https://cdp.example.net:8443"
    assert boot.warnings[0].startswith(f"{defaults} (the image's baked boot defaults) is "
                                       "unreadable or not valid JSON")

    async def scenario() -> None:
        app = RescueApp(Settings(boot=boot, dry_run_network=True, discover=False,
                                 basic=False))
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            assert isinstance(app.screen, NetworkScreen)
            # Textual keeps the notifications it shows here (its own tests read it too).
            shown = [n.message for n in app._notifications]
            assert shown == [f"boot options: {boot.warnings[0]}"]
    asyncio.run(scenario())
