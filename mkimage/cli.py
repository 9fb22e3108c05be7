"""`mkimage`: build the rescue image (docs/IMAGE.md)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from cdpcore.errors import CdpError

from .base import DEFAULT_EPOCH
from .build import BuildRequest, build
from .project import Bake

REPO = Path(__file__).resolve().parent.parent


@click.group(help="Build the CDP rescue image: kernel + initrd, hybrid ISO, PXE set.")
def main() -> None:
    pass


@main.command("build", help="Build kernel and initrd into OUT (and the ISO / PXE set on request). "
              "The Debian base is cached under CACHE; a rebuild after a code change takes seconds.")
@click.option("--cache", type=click.Path(path_type=Path), default=Path("/var/cache/cdp-mkimage"),
              show_default=True, help="Cache directory (Debian base layers, .deb files, wheels).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="Output directory: vmlinuz, initrd.img, rescue.iso, pxe/.")
@click.option("--iso", is_flag=True, help="Also build the hybrid ISO (BIOS + UEFI, CD + USB).")
@click.option("--pxe", is_flag=True, help="Also build the PXE set (iPXE script, GRUB netboot).")
@click.option("--mirror", help="Debian mirror URL (default: this machine's APT sources).")
@click.option("--src", type=click.Path(path_type=Path, file_okay=False), default=REPO,
              show_default=True, help="Working tree the project's code is taken from.")
@click.option("--bake-server", help="Default CDP server URL baked into the image.")
@click.option("--bake-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="CA certificate (PEM) of the server, baked into the image.")
@click.option("--bake-token", help="Restore token baked into the image (the image then holds "
              "a secret: keep it like one).")
@click.option("--bake-answers", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Answers file for unattended restores, baked into the image.")
@click.option("--json", "as_json", is_flag=True, help="Print the output sizes as JSON.")
def build_cmd(cache: Path, out: Path, iso: bool, pxe: bool, mirror: str | None, src: Path,
              bake_server: str | None, bake_ca: Path | None, bake_token: str | None,
              bake_answers: Path | None, as_json: bool) -> None:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    req = BuildRequest(cache=cache, out=out, src=src, iso=iso, pxe=pxe, mirror=mirror,
                       bake=Bake(bake_server, bake_ca, bake_token, bake_answers), epoch=epoch)
    start = time.monotonic()
    say = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    try:
        sizes = build(req, say)
    except CdpError as exc:
        click.echo(f"mkimage: {exc}", err=True)
        sys.exit(exc.exit_code)
    say(f"done in {time.monotonic() - start:.1f} s: {out}")
    if as_json:
        click.echo(json.dumps(sizes, sort_keys=True))
