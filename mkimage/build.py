"""Assembling the outputs from the cached base layer and a fresh project layer:
out/vmlinuz, out/initrd.img (base.cpio.zst || project.cpio.zst), out/rescue.iso (--iso),
out/pxe/ (--pxe). Every output is written to a temporary name and renamed into place, and
out/SHA256SUMS, naming this build's set, is written last: a build killed while renaming
leaves no SHA256SUMS, so a mixed set of two builds never passes `sha256sum -c`."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cdpcore import durable
from cdpcore.errors import CdpError
from cdpcore.runcmd import run

from . import cachedir, cpio
from .base import Base, ensure_base
from .project import Bake, populate

MAX_ISO = 250 * 1024 * 1024
MAX_INITRD = 200 * 1024 * 1024
#: The checksums of the set the last complete build installed (`sha256sum -c` format).
SUMS = "SHA256SUMS"


@dataclass(frozen=True)
class BuildRequest:
    cache: Path
    out: Path
    src: Path
    iso: bool = False
    pxe: bool = False
    mirror: str | None = None
    bake: Bake = field(default_factory=Bake)
    epoch: int = 0


def _replace(tmp: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.replace(final)


def build(req: BuildRequest, say: Callable[[str], None]) -> dict[str, int]:
    """Build what req asks for; returns the sizes (bytes) of the outputs."""
    base = ensure_base(req.cache, req.src / "pyproject.toml", req.mirror, req.epoch, say)
    cachedir.use(base.dir)
    for gone in [*cachedir.evict(req.cache, "base", base.dir),
                 *cachedir.forget_stale(req.cache, "base-build-")]:
        say(f"removed {gone} from the cache")
    req.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mkimage-", dir=req.out) as tmpdir:
        tmp = Path(tmpdir)
        tree = tmp / "project"
        tree.mkdir()
        populate(tree, req.src, req.bake)
        cpio.make_cpio(tree, tmp / "project.cpio.zst", req.epoch)
        initrd = tmp / "initrd.img"
        with initrd.open("wb") as f:
            for part in (base.cpio, tmp / "project.cpio.zst"):
                with part.open("rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
        shutil.copyfile(base.vmlinuz, tmp / "vmlinuz")
        sizes = {"vmlinuz": base.vmlinuz.stat().st_size, "initrd.img": initrd.stat().st_size,
                 "project.cpio.zst": (tmp / "project.cpio.zst").stat().st_size}
        if req.iso:
            sizes["rescue.iso"] = _make_iso(tmp, req.src, base, req.epoch)
        if req.pxe:
            _make_pxe(tmp, req.src)
        # Before anything is installed: an initrd over the limit fails the build (_report).
        _report(base, sizes, say)
        _install(tmp, req.out, [n for n in ("vmlinuz", "initrd.img", "rescue.iso", "pxe")
                                if (tmp / n).exists()])
    return sizes


def _sums(tmp: Path, names: list[str]) -> str:
    """`sha256sum` lines of the outputs `names` in `tmp` (a directory's files, sorted), by
    their paths under out/."""
    files = []
    for name in names:
        path = tmp / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    lines = []
    for path in files:
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        lines.append(f"{digest}  {path.relative_to(tmp)}\n")
    return "".join(lines)


def _install(tmp: Path, out: Path, names: list[str]) -> None:
    """Rename the outputs into out/ one after the other, between removing SHA256SUMS and
    writing the new one: the set is whole only once its SHA256SUMS is there."""
    sums = _sums(tmp, names)
    (out / SUMS).unlink(missing_ok=True)
    for name in names:
        _replace(tmp / name, out / name)
    durable.replace_file(out / SUMS, sums.encode(), mode=0o644)


def _make_iso(tmp: Path, src: Path, base: Base, epoch: int) -> int:
    stage = tmp / "iso-root"
    (stage / "boot/grub").mkdir(parents=True)
    shutil.copyfile(base.vmlinuz, stage / "boot/vmlinuz")
    shutil.copyfile(tmp / "initrd.img", stage / "boot/initrd.img")
    shutil.copyfile(src / "iso/grub.cfg", stage / "boot/grub/grub.cfg")
    cpio.clamp_mtimes(stage, epoch)
    iso = tmp / "rescue.iso"
    # grub-mkrescue makes the ISO's volume UUID (which GRUB's embedded config searches
    # for) from the clock, whatever SOURCE_DATE_EPOCH says: two builds of the same input
    # differed in 5408 bytes. Under a clock frozen at the epoch (libfaketime) they are
    # the same byte for byte.
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC"}
    frozen = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
    # The volume label is how the rescue system recognises its own boot medium
    # (rescue.discover.MEDIUM_LABEL; tests/rescue/test_loop.py checks the two agree).
    run(["faketime", "-f", frozen, "grub-mkrescue", "-o", str(iso), str(stage), "--",
         "-volid", "CDP_RESCUE"],
        env=env, timeout=1800)
    size = iso.stat().st_size
    if size >= MAX_ISO:
        raise CdpError(f"rescue.iso is {size / 2**20:.0f} MiB, over the {MAX_ISO // 2**20} MiB limit")
    return size


def _make_pxe(tmp: Path, src: Path) -> None:
    pxe = tmp / "pxe"
    pxe.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        os.link(tmp / name, pxe / name)
    shutil.copyfile(src / "iso/boot.ipxe", pxe / "boot.ipxe")
    shutil.copyfile(src / "iso/PXE-README.txt", pxe / "README.txt")
    run(["grub-mknetdir", f"--net-directory={pxe}", "--subdir=boot/grub"], timeout=600)
    shutil.copyfile(src / "iso/grub-netboot.cfg", pxe / "boot/grub/grub.cfg")


def _report(base: Base, sizes: dict[str, int], say: Callable[[str], None]) -> None:
    mib = 2**20
    say("size report (uncompressed root, by part):")
    for name, value in sorted(base.sizes.items()):
        say(f"  {name:<20} {value / mib:8.1f} MiB")
    say("outputs:")
    for name, value in sorted(sizes.items()):
        say(f"  {name:<20} {value / mib:8.1f} MiB")
    say(f"PXE initrd: {sizes['initrd.img'] / mib:.1f} MiB (limit {MAX_INITRD // mib} MiB)")
    if "rescue.iso" in sizes:
        say(f"ISO: {sizes['rescue.iso'] / mib:.1f} MiB (limit {MAX_ISO // mib} MiB)")
    if sizes["initrd.img"] >= MAX_INITRD:
        raise CdpError(f"initrd.img is {sizes['initrd.img'] / mib:.0f} MiB, over the "
                       f"{MAX_INITRD // mib} MiB limit")
