"""mkimage.build without mmdebstrap: a fake base layer, the real project layer and cpio."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import marshal
import os
import py_compile
import stat
import subprocess
import time
from pathlib import Path

import pytest

from cdpcore.errors import CdpError
from mkimage import base, config
from mkimage import build as build_mod
from mkimage.base import Base, compile_pyc
from mkimage.build import BuildRequest, build
from mkimage.cpio import make_cpio
from mkimage.project import Bake, populate

REPO = Path(__file__).resolve().parents[2]


def _fake_base(tmp_path: Path) -> Base:
    base = tmp_path / "base-fake"
    base.mkdir()
    (base / "vmlinuz").write_bytes(b"new kernel")
    (base / "base.cpio.zst").write_bytes(subprocess.run(
        ["zstd", "-q", "-c"], input=b"", capture_output=True, check=True).stdout)
    (base / "sizes.json").write_text(json.dumps({"root": 1}))
    return Base(base, "6.1.0-test")


def test_initrd_over_the_limit_leaves_the_old_image_in_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/IMAGE.md: the build fails if the initrd reaches 200 MiB; out/ must then still
    hold the previous image, not the over-limit one."""
    base = _fake_base(tmp_path)
    monkeypatch.setattr(build_mod, "ensure_base", lambda *a, **k: base)
    monkeypatch.setattr(build_mod, "MAX_INITRD", 64)
    out = tmp_path / "out"
    out.mkdir()
    (out / "vmlinuz").write_bytes(b"old kernel")
    (out / "initrd.img").write_bytes(b"old initrd")
    with pytest.raises(CdpError, match="over the 0 MiB limit"):
        build(BuildRequest(cache=tmp_path, out=out, src=REPO, epoch=1704067200),
              lambda msg: None)
    assert (out / "initrd.img").read_bytes() == b"old initrd"
    assert (out / "vmlinuz").read_bytes() == b"old kernel"
    assert sorted(p.name for p in out.iterdir()) == ["initrd.img", "vmlinuz"]


def test_sha256sums_names_the_whole_set_and_only_a_whole_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """out/SHA256SUMS checks with `sha256sum -c`; a build that stops between its renames
    (killed, disk full) leaves none, so a mixed set of two builds does not pass."""
    base = _fake_base(tmp_path)
    monkeypatch.setattr(build_mod, "ensure_base", lambda *a, **k: base)
    out = tmp_path / "out"
    req = BuildRequest(cache=tmp_path, out=out, src=REPO, epoch=1704067200)
    build(req, lambda msg: None)
    sums = (out / "SHA256SUMS").read_text()
    assert [line.split("  ")[1] for line in sums.splitlines()] == ["vmlinuz", "initrd.img"]
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0 and check.stdout == "vmlinuz: OK\ninitrd.img: OK\n"

    (base.dir / "vmlinuz").write_bytes(b"newer kernel")
    real_replace = build_mod._replace

    def stop_at_initrd(tmp: Path, final: Path) -> None:
        if final.name == "initrd.img":
            raise OSError(28, "No space left on device")
        real_replace(tmp, final)

    monkeypatch.setattr(build_mod, "_replace", stop_at_initrd)
    with pytest.raises(OSError, match="No space left"):
        build(req, lambda msg: None)
    assert (out / "vmlinuz").read_bytes() == b"newer kernel"  # the new kernel, old initrd
    assert not (out / "SHA256SUMS").exists()


def test_the_iso_is_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ISO builds of the same input a few seconds apart are the same bytes: Debian
    12's grub-mkrescue takes the volume UUID from the clock (5408 bytes differed) unless
    the build freezes it."""
    base = _fake_base(tmp_path)
    monkeypatch.setattr(build_mod, "ensure_base", lambda *a, **k: base)
    isos = []
    for name in ("one", "two"):
        build(BuildRequest(cache=tmp_path, out=tmp_path / name, src=REPO, iso=True,
                           epoch=1704067200), lambda msg: None)
        isos.append((tmp_path / name / "rescue.iso").read_bytes())
        time.sleep(1.1)  # a clock read in the build differs from one build to the next
    assert isos[0] == isos[1]
    assert b"CDP_RESCUE" in isos[0][32768:34816]  # the primary volume descriptor's label


def test_sha256sums_lists_a_directorys_files_by_their_paths(tmp_path: Path) -> None:
    (tmp_path / "pxe/boot/grub").mkdir(parents=True)
    (tmp_path / "pxe/boot/grub/grub.cfg").write_bytes(b"menu")
    (tmp_path / "pxe/boot/vmlinuz").write_bytes(b"k")
    (tmp_path / "initrd.img").write_bytes(b"")
    assert build_mod._sums(tmp_path, ["initrd.img", "pxe"]) == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  initrd.img\n"
        f"{hashlib.sha256(b'menu').hexdigest()}  pxe/boot/grub/grub.cfg\n"
        f"{hashlib.sha256(b'k').hexdigest()}  pxe/boot/vmlinuz\n")


def _project_cpio(tmp_path: Path, name: str, umask: int) -> bytes:
    tree = tmp_path / name / "project"
    tree.mkdir(parents=True)
    old = os.umask(umask)
    try:
        populate(tree, REPO, Bake(server="https://s", token="t0"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tree / "etc/cdp/defaults.json").stat().st_mode) == 0o600  # a secret
    make_cpio(tree, tmp_path / name / "project.cpio.zst", 1704067200)
    return (tmp_path / name / "project.cpio.zst").read_bytes()


def test_project_layer_is_reproducible(tmp_path: Path) -> None:
    """The same sources give the same project.cpio.zst, whatever temporary directory the
    build used (the .pyc files name their source by its path in the image) and whatever
    the builder's umask (a later archive's directory modes apply to /usr, /etc, ...)."""
    assert _project_cpio(tmp_path, "one", 0o022) == _project_cpio(tmp_path, "two-long", 0o077)


def test_wheel_bytecode_is_rebuilt_hash_based_with_image_paths(tmp_path: Path) -> None:
    """pip leaves timestamp-based .pyc naming its own temporary directory; those would be
    stale in the image (every mtime is SOURCE_DATE_EPOCH) and differ between builds."""
    pycs = []
    for name in ("a", "bb"):
        site = tmp_path / name / config.SITE_DIR
        (site / "pkg").mkdir(parents=True)
        (site / "pkg/mod.py").write_text("X = 1\n")
        py_compile.compile(str(site / "pkg/mod.py"), dfile=f"/tmp/pip-target-{name}/pkg/mod.py")
        compile_pyc(site)
        pycs.append((site / "pkg" / importlib.util.cache_from_source("mod.py")).read_bytes())
    assert pycs[0] == pycs[1]
    assert int.from_bytes(pycs[0][4:8], "little") == 1  # hash-based, unchecked
    assert marshal.loads(pycs[0][16:]).co_filename == f"/{config.SITE_DIR}/pkg/mod.py"


def test_the_base_carries_no_name_servers_of_the_build_host(tmp_path: Path) -> None:
    """mmdebstrap copies the build host's /etc/resolv.conf into the root (or a symlink to
    its /run): the rescue system would ask the build site's name servers."""
    root = tmp_path / "root"
    (root / "etc/lvm").mkdir(parents=True)
    (root / "etc/lvm/lvm.conf").write_text("devices {\n\t# obtain_device_list_from_udev = 0\n}\n")
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    base._configure(root)
    resolv = root / "etc/resolv.conf"
    assert not resolv.is_symlink() and resolv.read_text() == ""
