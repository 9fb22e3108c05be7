"""`rescue tui`: start the full-screen restore console. Options override the boot options
(kernel command line), which prefill the forms. Textual is imported only when it runs."""

from __future__ import annotations

import os
from dataclasses import replace

import click

from .settings import Settings, boot_options_from


@click.command()
@click.option("--server", help="CDP server URL (default: cdp.server= on the kernel command line)")
@click.option("--token", help="restore token (default: cdp.token=)")
@click.option("--host", "host_name", help="host to restore (default: cdp.host=)")
@click.option("--ca", help="CA certificate file of the server (default: cdp.ca=)")
@click.option("--fingerprint", help="pin the server certificate's SHA-256 fingerprint")
@click.option("--target", "targets", multiple=True, metavar="FILE",
              help="also offer this image file as a restore target (repeatable)")
@click.option("--no-discover", is_flag=True, help="do not list local disks (image files only)")
@click.option("--dry-run-network", is_flag=True,
              help="show the ip/udhcpc commands instead of running them")
@click.option("--basic/--full", default=None,
              help="16 colours and ASCII borders (default: on for TERM=linux/vt100 and "
              "serial consoles)")
@click.option("--cmdline", default="/proc/cmdline", show_default=True,
              help="kernel command line to read boot options from")
@click.option("--state-dir", help="where the resume state and report go")
def tui(server: str | None, token: str | None, host_name: str | None, ca: str | None,
        fingerprint: str | None, targets: tuple[str, ...], no_discover: bool,
        dry_run_network: bool, basic: bool | None, cmdline: str, state_dir: str | None) -> None:
    """Full-screen restore console: network, connect, pick a point, map disks, review,
    restore. F2 or ctrl+z opens a shell; ctrl+q quits."""
    boot = boot_options_from(cmdline, lenient=True)
    boot = replace(boot, server=server or boot.server, token=token or boot.token,
                   host=host_name or boot.host, ca=ca or boot.ca)
    settings = Settings(boot=boot, fingerprint=fingerprint, targets=list(targets),
                        discover=not no_discover, dry_run_network=dry_run_network,
                        basic=basic, state_dir=state_dir)
    if settings.basic_mode():
        # Read by Textual at import: the 16 standard colours only.
        os.environ.setdefault("TEXTUAL_COLOR_SYSTEM", "standard")
    from .app import create_app
    create_app(settings).run()
