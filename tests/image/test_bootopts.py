"""rescue.bootopts: the kernel command line of the rescue system, parsed."""

from __future__ import annotations

import json

import pytest

from cdpcore.errors import UsageError
from rescue import bootopts
from rescue.bootopts import (
    NetConfig,
    Vlan,
    load_defaults,
    main,
    parse_cmdline,
    parse_ip,
    parse_vlan,
    shell_vars,
)


def test_product_options_and_console() -> None:
    opts = parse_cmdline('BOOT_IMAGE=/boot/vmlinuz console=tty0 console=ttyS1,115200n8 quiet '
                         'cdp.server=https://backup.example:8443 cdp.token=abc cdp.host=web1 '
                         'cdp.point=42 cdp.answers="http://x/a b.json" cdp.auto=1')
    assert (opts.server, opts.token, opts.host, opts.point) == (
        "https://backup.example:8443", "abc", "web1", "42")
    assert opts.answers == "http://x/a b.json"
    assert opts.auto is True and opts.test is False
    assert opts.serial_console == "ttyS1"
    assert opts.warnings == ()


def test_nothing_destructive_by_default() -> None:
    opts = parse_cmdline("console=tty0 cdp.server=https://s")
    assert opts.auto is False
    assert "CDP_AUTO=0\n" in shell_vars(opts)


def test_auto_without_source_warns() -> None:
    assert parse_cmdline("cdp.auto=1").warnings == (
        "cdp.auto=1 without cdp.server or cdp.answers: nothing to restore from",)


def test_boot_medium_option_is_known() -> None:
    opts = parse_cmdline("cdp.medium=/dev/sdb")
    assert opts.medium == "/dev/sdb" and opts.warnings == ()


def test_unknown_cdp_option_is_a_warning_not_a_failure() -> None:
    assert parse_cmdline("cdp.sever=x").warnings == ("unknown boot option cdp.sever (ignored)",)


def test_bad_flag_is_a_warning_and_off() -> None:
    opts = parse_cmdline("cdp.auto=1 cdp.auto=maybe cdp.server=https://s console=ttyS0")
    assert opts.auto is False
    assert (opts.server, opts.serial_console) == ("https://s", "ttyS0")
    assert opts.warnings == ("cdp.auto=maybe: expected 1 or 0 (taken as 0)",)


@pytest.mark.parametrize("value", ["dhcp", "on", "any"])
def test_ip_dhcp(value: str) -> None:
    assert parse_cmdline(f"ip={value}").net == NetConfig(mode="dhcp")


def test_ip_dhcp_on_one_interface() -> None:
    assert parse_cmdline("ip=:::::eth1:dhcp").net == NetConfig(mode="dhcp", iface="eth1")


def test_ip_static() -> None:
    net = parse_cmdline("ip=192.0.2.10::192.0.2.1:255.255.255.0:rescue:eth0:none").net
    assert net == NetConfig(mode="static", iface="eth0", address="192.0.2.10", prefix=24,
                            gateway="192.0.2.1", hostname="rescue")


def test_ip_static_with_name_servers() -> None:
    opts = parse_cmdline("ip=192.0.2.10::192.0.2.1:255.255.255.0::eth0:none:192.0.2.53:192.0.2.54")
    assert opts.net.dns == ("192.0.2.53", "192.0.2.54")
    env = dict(line.split("=", 1) for line in shell_vars(opts).splitlines())
    assert env["CDP_IP_DNS"] == "'192.0.2.53 192.0.2.54'"
    assert parse_cmdline("ip=192.0.2.10:::255.255.255.0::eth0:none::192.0.2.54").net.dns == \
        ("192.0.2.54",)


@pytest.mark.parametrize(("value", "message"), [
    ("192.0.2.10::192.0.2.1:255.255.255.0::eth0:none:dns.example", "dns.example"),
    ("192.0.2.10::192.0.2.1:255.255.255.0::eth0:bootp", "autoconf must be dhcp or none"),
    ("192.0.2.10::192.0.2.1:255.255.255.0", "a static address needs"),
    ("192.0.2.300:::255.255.255.0::eth0:none", "192.0.2.300"),
    ("192.0.2.10::192.0.2.1:255.0.255.0::eth0:none", "255.0.255.0"),
])
def test_ip_errors(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_ip(value)


def test_vlan_moves_the_address_to_the_vlan_interface() -> None:
    opts = parse_cmdline("ip=dhcp vlan=eth0.100:eth0")
    assert opts.vlan == Vlan(name="eth0.100", parent="eth0", id=100)
    env = dict(line.split("=", 1) for line in shell_vars(opts).splitlines())
    assert env["CDP_IP_IFACE"] == "eth0.100"
    assert (env["CDP_VLAN_PARENT"], env["CDP_VLAN_ID"]) == ("eth0", "100")


@pytest.mark.parametrize("value", ["eth0", "eth0.5000:eth0", "vlan7"])
def test_vlan_errors(value: str) -> None:
    with pytest.raises(UsageError, match="expected NAME:PARENT"):
        parse_vlan(value)


@pytest.mark.parametrize("net", ["ip=10.0.0.5 vlan=eth0.100:eth0", "ip=dhcp vlan=eth0"])
def test_bad_network_option_leaves_the_network_off_and_keeps_the_rest(net: str) -> None:
    """docs/IMAGE.md: a malformed ip=/vlan= is reported and the network left unconfigured;
    the serial console, test mode, boot medium, server and baked defaults still apply."""
    opts = parse_cmdline(f"console=tty0 console=ttyS0,115200n8 {net} cdp.test=1 "
                         "cdp.medium=/dev/sdb cdp.server=https://s", {"token": "t0"})
    assert opts.net == NetConfig() and opts.vlan is None
    assert (opts.serial_console, opts.test, opts.medium, opts.server, opts.token) == (
        "ttyS0", True, "/dev/sdb", "https://s", "t0")
    assert len(opts.warnings) == 1 and "network left unconfigured" in opts.warnings[0]


def test_bad_network_option_in_the_init_output(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0,115200n8 ip=10.0.0.5 cdp.test=1\n")
    assert main([str(cmdline), "--shell"]) == 0
    captured = capsys.readouterr()
    assert "CDP_IP_MODE=none\n" in captured.out
    assert "CDP_SERIAL=ttyS0\n" in captured.out and "CDP_TEST=1\n" in captured.out
    assert captured.err.count("ip=10.0.0.5") == 1


def test_quoting_is_the_kernels() -> None:
    """Only double quotes group words (and are removed); a single quote or a backslash is
    an ordinary character, as in the kernel's own parser."""
    opts = parse_cmdline('cdp.answers="http://h/a b.json" cdp.host=o\'brien '
                         'cdp.ca=/media/a\\b.pem console=ttyS0')
    assert (opts.answers, opts.host, opts.ca, opts.serial_console) == (
        "http://h/a b.json", "o'brien", "/media/a\\b.pem", "ttyS0")
    assert parse_cmdline('console=ttyS1 cdp.host="web 1').host == "web 1"


def test_baked_defaults_yield_to_the_command_line() -> None:
    opts = parse_cmdline("cdp.server=https://other", {"server": "https://baked",
                                                      "token": "t0", "ca": "/etc/cdp/ca.pem"})
    assert (opts.server, opts.token, opts.ca) == ("https://other", "t0", "/etc/cdp/ca.pem")


def test_shell_output_is_quoted(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("ip=10.1.2.3::10.1.2.1:255.255.0.0::eth0:none console=ttyS0 cdp.test=1\n")
    assert main([str(cmdline), "--shell"]) == 0
    out = capsys.readouterr().out
    assert "CDP_IP_ADDR=10.1.2.3\nCDP_IP_PREFIX=16\n" in out
    assert "CDP_SERIAL=ttyS0\n" in out and "CDP_TEST=1\n" in out
    saved = tmp_path / "bootopts.json"
    assert main([str(cmdline), "--json", "--save-json", str(saved)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert json.loads(saved.read_text()) == data
    assert data["net"]["gateway"] == "10.1.2.1" and data["test"] is True


def test_saved_options_holding_a_token_are_private(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The init saves the boot options to /run/cdp/bootopts.json: with cdp.token= (or a
    baked token) that file holds a secret, and was created world-readable (0644 under
    the init's umask), unlike the fetched answers file (0600). Rewriting an older,
    readable file makes it private too."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("cdp.server=https://s cdp.token=s3cr3t-t0ken\n")
    saved = tmp_path / "bootopts.json"
    saved.write_text("{}")
    saved.chmod(0o644)
    assert main([str(cmdline), "--shell", "--save-json", str(saved)]) == 0
    assert "s3cr3t-t0ken" not in capsys.readouterr().out
    assert json.loads(saved.read_text())["token"] == "s3cr3t-t0ken"
    assert saved.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(("text", "message"), [
    ('{"server": "https://s",}', "is unreadable or not valid JSON: Expecting"),
    ('["https://s"]', "must hold a JSON object"),
])
def test_malformed_baked_defaults_are_named_and_the_command_line_still_applies(
        text, message, tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A malformed /etc/cdp/defaults.json was a bare JSONDecodeError (AttributeError for a
    list): a traceback in the init's `eval "$(python3 -m rescue.bootopts --shell)"`, which
    left every boot variable unset (no network, no cdp.auto=1)."""
    defaults = tmp_path / "defaults.json"
    defaults.write_text(text)
    with pytest.raises(UsageError, match=rf"^{defaults} \(the image's baked boot defaults\)"):
        load_defaults(defaults)
    monkeypatch.setattr(bootopts, "DEFAULTS_FILE", defaults)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("ip=dhcp cdp.auto=1 cdp.answers=/a.json\n")
    assert main([str(cmdline), "--shell"]) == 0
    out, err = capsys.readouterr()
    assert "CDP_AUTO=1\n" in out and "CDP_IP_MODE=dhcp\n" in out
    assert f"cdp-rescue: warning: {defaults} (the image's baked boot defaults)" in err
    assert message in err and "Traceback" not in err
