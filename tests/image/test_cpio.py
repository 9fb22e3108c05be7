"""Initramfs archives are reproducible: same tree, same bytes, whatever the mtimes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mkimage.cpio import make_cpio


def _tree(root: Path, mtime: int) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "init").write_text("#!/bin/sh\n")
    (root / "init").chmod(0o755)
    (root / "usr/bin/b").write_bytes(b"b" * 5000)
    (root / "usr/bin/a").symlink_to("b")
    for p in (root / "init", root / "usr/bin/b"):
        os.utime(p, (mtime, mtime))


def test_same_tree_same_bytes(tmp_path: Path) -> None:
    _tree(tmp_path / "one", 1_000_000)
    _tree(tmp_path / "two", 2_000_000)
    make_cpio(tmp_path / "one", tmp_path / "one.cpio.zst", 1704067200)
    make_cpio(tmp_path / "two", tmp_path / "two.cpio.zst", 1704067200)
    assert (tmp_path / "one.cpio.zst").read_bytes() == (tmp_path / "two.cpio.zst").read_bytes()
    names = subprocess.run(
        f"zstd -dc {tmp_path / 'one.cpio.zst'} | cpio -it --quiet", shell=True, check=True,
        capture_output=True, text=True).stdout.split()
    assert names == ["init", "usr", "usr/bin", "usr/bin/a", "usr/bin/b"]
