"""Boot options of the rescue system, read from the kernel command line (/proc/cmdline).

One parser for the init (initramfs/init evaluates `--shell`), the TUI and the restore engine
(`/run/cdp/bootopts.json`, written at boot by `--json`). `parse_cmdline` is pure.

Product options: cdp.server=URL cdp.token=T cdp.host=NAME cdp.point=ID
cdp.answers=URL|path cdp.ca=path cdp.medium=/dev/DISK (the boot medium, never a target)
cdp.auto=1 (unattended restore by `rescue auto`; nothing destructive happens without it) cdp.test=1 (root shell on the serial console for mkimage.qemu).
Network: ip=dhcp | ip=addr::gw:mask:hostname:iface:none[:dns0[:dns1]] (the kernel's form),
vlan=NAME:PARENT (dracut form, e.g. vlan=eth0.100:eth0). Console: console=ttyS0,115200.
Defaults baked into a site's image (/etc/cdp/defaults.json) apply unless the command line
says otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cdpcore import durable
from cdpcore.errors import UsageError

DEFAULTS_FILE = Path("/etc/cdp/defaults.json")
_TRUE = {"1", "yes", "true", "on", ""}
_FALSE = {"0", "no", "false", "off"}
_KNOWN = {"cdp.server", "cdp.token", "cdp.host", "cdp.point", "cdp.answers", "cdp.ca",
          "cdp.medium", "cdp.auto", "cdp.test"}


@dataclass(frozen=True)
class NetConfig:
    mode: Literal["none", "dhcp", "static"] = "none"
    iface: str | None = None  # None with dhcp: every NIC in turn until one gets a lease
    address: str | None = None
    prefix: int | None = None
    gateway: str | None = None
    hostname: str | None = None
    dns: tuple[str, ...] = ()  # static only: the kernel form's dns0 and dns1 fields


@dataclass(frozen=True)
class Vlan:
    name: str
    parent: str
    id: int


@dataclass(frozen=True)
class BootOptions:
    server: str | None = None
    token: str | None = None
    host: str | None = None
    point: str | None = None
    answers: str | None = None
    ca: str | None = None
    medium: str | None = None  # the boot medium's device (rescue.discover refuses it)
    auto: bool = False
    test: bool = False
    net: NetConfig = field(default_factory=NetConfig)
    vlan: Vlan | None = None
    serial_console: str | None = None  # e.g. "ttyS0"
    warnings: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def _flag(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UsageError(f"{key}={value}: expected 1 or 0")


def parse_ip(value: str) -> NetConfig:
    """ip= in the kernel's form: dhcp/on/any, or
    client:server:gw:netmask:hostname:iface:autoconf[:dns0[:dns1]]."""
    if value in ("dhcp", "on", "any"):
        return NetConfig(mode="dhcp")
    if value in ("off", "none"):
        return NetConfig()
    fields = value.split(":") + [""] * 9
    client, _server, gw, mask, hostname, iface, autoconf, dns0, dns1 = fields[:9]
    if autoconf in ("dhcp", "on", "any"):
        return NetConfig(mode="dhcp", iface=iface or None, hostname=hostname or None)
    if autoconf not in ("", "off", "none"):
        raise UsageError(f"ip={value}: autoconf must be dhcp or none, not {autoconf!r}")
    if not client or not iface:
        raise UsageError(f"ip={value}: a static address needs addr::gw:mask:hostname:iface:none")
    try:
        net = ipaddress.IPv4Network(f"{client}/{mask or 24}", strict=False)
        ipaddress.IPv4Address(client)
        for given in (gw, dns0, dns1):
            if given:
                ipaddress.IPv4Address(given)
    except ValueError as exc:
        raise UsageError(f"ip={value}: {exc}") from None
    return NetConfig(mode="static", iface=iface, address=client, prefix=net.prefixlen,
                     gateway=gw or None, hostname=hostname or None,
                     dns=tuple(d for d in (dns0, dns1) if d))


def parse_vlan(value: str) -> Vlan:
    name, _, parent = value.partition(":")
    match = re.search(r"(?:\.|vlan)0*(\d+)$", name)
    if not parent or not match or not 1 <= int(match.group(1)) <= 4094:
        raise UsageError(f"vlan={value}: expected NAME:PARENT with NAME like eth0.100 or vlan100")
    return Vlan(name=name, parent=parent, id=int(match.group(1)))


def kernel_words(cmdline: str) -> list[str]:
    """The command line split as the kernel splits it: at blanks outside double quotes; the
    quotes are removed; a single quote or a backslash is an ordinary character; an unclosed
    quote runs to the end of the line."""
    def split(text: str) -> list[str]:
        lex = shlex.shlex(text, posix=True)
        lex.whitespace_split, lex.commenters, lex.quotes, lex.escape = True, "", '"', ""
        return list(lex)
    try:
        return split(cmdline)
    except ValueError:  # no closing quotation
        return split(cmdline.rstrip() + '"')


def parse_cmdline(cmdline: str, defaults: dict[str, str] | None = None) -> BootOptions:
    """Boot options from a kernel command line; `defaults` (baked into the image: keys
    server, token, host, point, answers, ca) apply where the command line is silent.
    Nothing here stops a rescue boot: a malformed ip= or vlan= is a warning and leaves the
    network unconfigured, a malformed cdp.auto/cdp.test a warning and off, unknown cdp.*
    options a warning; every other option still applies."""
    values: dict[str, Any] = {k: v for k, v in (defaults or {}).items()
                              if k in ("server", "token", "host", "point", "answers", "ca")}
    warnings: list[str] = []
    net_errors: list[str] = []
    for word in kernel_words(cmdline):
        key, has_value, value = word.partition("=")
        try:
            if key == "ip" and has_value:
                values["net"] = parse_ip(value)
            elif key == "vlan" and has_value:
                values["vlan"] = parse_vlan(value)
            elif key == "console" and has_value:
                tty = value.split(",")[0]
                if re.fullmatch(r"ttyS\d+|ttyAMA\d+|hvc\d+|ttyUSB\d+", tty):
                    values["serial_console"] = tty
            elif key in ("cdp.auto", "cdp.test"):
                values[key[4:]] = _flag(key, value)
            elif key in _KNOWN:
                values[key[4:]] = value or None
            elif key.startswith("cdp."):
                warnings.append(f"unknown boot option {key} (ignored)")
        except UsageError as exc:
            if key in ("ip", "vlan"):
                net_errors.append(f"{exc} (network left unconfigured)")
            else:
                values[key[4:]] = False
                warnings.append(f"{exc} (taken as 0)")
    if net_errors:
        warnings += net_errors
        values["net"] = NetConfig()
        values.pop("vlan", None)
    if values.get("auto") and not (values.get("server") or values.get("answers")):
        warnings.append("cdp.auto=1 without cdp.server or cdp.answers: nothing to restore from")
    return BootOptions(**values, warnings=tuple(warnings))


def shell_vars(opts: BootOptions) -> str:
    """Variables for initramfs/init (`eval "$(python3 -m rescue.bootopts --shell)"`)."""
    net, vlan = opts.net, opts.vlan
    values = {
        "CDP_IP_MODE": net.mode, "CDP_IP_IFACE": net.iface or "",
        "CDP_IP_ADDR": net.address or "", "CDP_IP_PREFIX": str(net.prefix or ""),
        "CDP_IP_GATEWAY": net.gateway or "", "CDP_IP_DNS": " ".join(net.dns),
        "CDP_VLAN_IFACE": vlan.name if vlan else "", "CDP_VLAN_PARENT": vlan.parent if vlan else "",
        "CDP_VLAN_ID": str(vlan.id) if vlan else "",
        "CDP_SERIAL": opts.serial_console or "", "CDP_AUTO": "1" if opts.auto else "0",
        "CDP_TEST": "1" if opts.test else "0",
    }
    # With a VLAN the address belongs on the VLAN interface.
    if vlan and net.mode != "none" and net.iface in (None, vlan.parent):
        values["CDP_IP_IFACE"] = vlan.name
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def load_defaults(path: Path | None = None) -> dict[str, str]:
    """The image's baked defaults (DEFAULTS_FILE); {} without the file. A file that is
    not a JSON object is a UsageError naming it: a bare JSONDecodeError was a traceback
    in `rescue auto` (no CDP-RESTORE-DONE line) and in the init's boot options call."""
    path = path or DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
        raise UsageError(f"{path} (the image's baked boot defaults) is unreadable or not "
                         f"valid JSON: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} (the image's baked boot defaults) must hold a JSON "
                         "object, such as {\"server\": \"https://...\"}")
    return {k: str(v) for k, v in data.items()}


def with_defaults(cmdline: str, *, lenient: bool = False) -> BootOptions:
    """The options of a kernel command line, with the image's baked defaults where it is
    silent. `lenient` (the init, the TUI): unreadable defaults are a warning among the
    options' warnings, not a UsageError, and the command line still applies (network,
    consoles, cdp.auto=1, whose `rescue auto` then fails with the error on its
    CDP-RESTORE-DONE line): a traceback left every boot variable of the init unset, and a
    TUI that stopped there was restarted by the init in a loop."""
    try:
        defaults = load_defaults()
    except UsageError as exc:
        if not lenient:
            raise
        opts = parse_cmdline(cmdline)
        return replace(opts, warnings=(f"{exc} (ignored)", *opts.warnings))
    return parse_cmdline(cmdline, defaults)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m rescue.bootopts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmdline", nargs="?", default="/proc/cmdline", help="file to read")
    ap.add_argument("--shell", action="store_true", help="print shell variables for the init")
    ap.add_argument("--json", action="store_true", help="print the options as JSON (default)")
    ap.add_argument("--save-json", metavar="FILE", help="also write the options as JSON to FILE")
    args = ap.parse_args(argv)
    try:
        opts = with_defaults(Path(args.cmdline).read_text(), lenient=True)
    except UsageError as exc:
        print(f"cdp-rescue: bad boot option: {exc}", file=sys.stderr)
        opts = BootOptions(warnings=(str(exc),))
    if args.save_json:
        # Private: it holds cdp.token= (or a baked token), like the fetched answers file.
        durable.replace_file(args.save_json, (opts.to_json() + "\n").encode(), mode=0o600)
    for w in opts.warnings:
        print(f"cdp-rescue: warning: {w}", file=sys.stderr)
    print(shell_vars(opts) if args.shell else opts.to_json(), end="" if args.shell else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
