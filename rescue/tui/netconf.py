"""Network screen model (pure parts) and the commands that apply it: interfaces from
`ip -j addr`, a configuration prefilled from the boot options, and the exact `ip` and
`udhcpc` commands, run through cdpcore.runcmd unless the TUI runs in dry-run mode."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from cdpcore import runcmd
from cdpcore.errors import UsageError

from ..bootopts import BootOptions

Mode = Literal["dhcp", "static", "none"]
#: The image has busybox's udhcpc, not dhclient; this script (from initramfs/) applies the
#: lease, as it does for the init's own DHCP.
UDHCPC_SCRIPT = "/usr/share/cdp-rescue/udhcpc.script"


@dataclass
class Interface:
    name: str
    state: str  # UP, DOWN, UNKNOWN (operstate)
    mac: str
    addresses: list[str] = field(default_factory=list)  # "192.0.2.2/24"
    carrier: bool = False


@dataclass
class NetSettings:
    mode: Mode = "dhcp"
    iface: str = ""
    address: str = ""  # "192.0.2.10/24"
    gateway: str = ""
    dns: str = ""  # space-separated name servers
    vlan: str = ""  # VLAN ID on `iface`, empty for none


def parse_ip_addr(doc: list[dict[str, Any]]) -> list[Interface]:
    out = []
    for link in doc:
        if link.get("link_type") == "loopback":
            continue
        out.append(Interface(
            name=str(link["ifname"]), state=str(link.get("operstate", "UNKNOWN")),
            mac=str(link.get("address", "")), carrier="LOWER_UP" in link.get("flags", []),
            addresses=[f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                       if a.get("family") in ("inet", "inet6")]))
    return out


def interfaces() -> list[Interface]:
    return parse_ip_addr(runcmd.run_json(["ip", "-j", "addr"]))


def from_boot(opts: BootOptions, ifaces: list[Interface]) -> NetSettings:
    """The kernel command line's ip= and vlan= as the form's starting values."""
    net, vlan = opts.net, opts.vlan
    default_iface = next((i.name for i in ifaces if i.carrier), ifaces[0].name if ifaces
                         else "")
    iface = (vlan.parent if vlan else None) or net.iface or default_iface
    if net.mode == "static":
        return NetSettings("static", iface, f"{net.address}/{net.prefix}", net.gateway or "",
                           vlan=str(vlan.id) if vlan else "")
    return NetSettings("none" if net.mode == "none" and not vlan else "dhcp", iface,
                       vlan=str(vlan.id) if vlan else "")


def validate(cfg: NetSettings) -> None:
    if cfg.mode == "none":
        return
    if not cfg.iface:
        raise UsageError("choose an interface")
    if cfg.vlan and not (cfg.vlan.isdigit() and 1 <= int(cfg.vlan) <= 4094):
        raise UsageError(f"VLAN ID {cfg.vlan!r}: expected a number from 1 to 4094")
    if cfg.mode == "static":
        try:
            ipaddress.ip_interface(cfg.address)
        except ValueError:
            raise UsageError(f"address {cfg.address!r}: expected ADDRESS/PREFIX, "
                             "e.g. 192.0.2.10/24") from None
        if "/" not in cfg.address:
            raise UsageError(f"address {cfg.address!r}: add the prefix length, e.g. /24")
    for what, value in [("gateway", cfg.gateway), *(("DNS server", d)
                                                    for d in cfg.dns.split())]:
        if value:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise UsageError(f"{what} {value!r} is not an IP address") from None


def commands(cfg: NetSettings, existing: Collection[str] = ()) -> list[list[str]]:
    """The commands that bring the configuration up, in order (resolv.conf is written
    separately, see `resolv_conf`). `existing`: interface names already present; a VLAN
    among them (the init makes the one vlan= names) is used as it is."""
    validate(cfg)
    if cfg.mode == "none":
        return []
    dev = f"{cfg.iface}.{cfg.vlan}" if cfg.vlan else cfg.iface
    cmds = [["ip", "link", "set", cfg.iface, "up"]]
    if cfg.vlan:
        if dev not in existing:
            cmds.append(["ip", "link", "add", "link", cfg.iface, "name", dev, "type", "vlan",
                         "id", cfg.vlan])
        cmds.append(["ip", "link", "set", dev, "up"])
    if cfg.mode == "dhcp":
        return [*cmds, ["busybox", "udhcpc", "-i", dev, "-n", "-q", "-t", "5", "-T", "2",
                        "-s", UDHCPC_SCRIPT]]
    cmds += [["ip", "addr", "flush", "dev", dev], ["ip", "addr", "add", cfg.address, "dev", dev]]
    if cfg.gateway:
        cmds.append(["ip", "route", "replace", "default", "via", cfg.gateway, "dev", dev])
    return cmds


def resolv_conf(cfg: NetSettings) -> str | None:
    servers = cfg.dns.split()
    return "".join(f"nameserver {s}\n" for s in servers) if servers else None


def apply(cfg: NetSettings, dry_run: bool) -> list[str]:
    """Run the commands (or only list them in a dry run); returns what was done, one line
    each. A failing command raises CommandFailed naming it."""
    done = []
    for argv in commands(cfg, os.listdir("/sys/class/net")):
        if not dry_run:
            runcmd.run(argv, timeout=90)
        done.append(("would run: " if dry_run else "ran: ") + " ".join(argv))
    text = resolv_conf(cfg)
    if text is not None:
        if not dry_run:
            with open("/etc/resolv.conf", "w") as f:
                f.write(text)
        done.append(("would write" if dry_run else "wrote") + " /etc/resolv.conf: "
                    + " ".join(cfg.dns.split()))
    return done
