"""The project layer: the init, the project's own Python packages and console scripts, and
any site defaults baked in. Small, so rebuilding it after a code change takes seconds; it is
unpacked over the base layer (later cpio archives win)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cdpcore.errors import UsageError

from . import config
from .base import compile_pyc


@dataclass(frozen=True)
class Bake:
    """Site defaults baked into the image (rescue.bootopts reads /etc/cdp/defaults.json)."""

    server: str | None = None
    ca: Path | None = None
    token: str | None = None
    answers: Path | None = None

    def defaults(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.server:
            out["server"] = self.server
        if self.token:
            out["token"] = self.token
        if self.ca:
            out["ca"] = "/etc/cdp/ca.pem"
        if self.answers:
            out["answers"] = "/etc/cdp/answers" + self.answers.suffix
        return out


def _scripts(pyproject: Path) -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    return {name: scripts[name] for name in config.PROJECT_SCRIPTS}


def populate(tree: Path, src: Path, bake: Bake) -> None:
    """Lay out the project layer under tree from the working tree src."""
    init = src / "initramfs"
    shutil.copy2(init / "init", tree / "init")
    share = tree / "usr/share/cdp-rescue"
    share.mkdir(parents=True)
    for name in ("udhcpc.script", "banner"):
        shutil.copy2(init / name, share / name)
    site = tree / config.SITE_DIR
    site.mkdir(parents=True)
    for pkg in config.PROJECT_PACKAGES:
        if not (src / pkg / "__init__.py").is_file():
            raise UsageError(f"{src / pkg} is not a Python package: is --src the working tree?")
        shutil.copytree(src / pkg, site / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    compile_pyc(site, *[site / p for p in config.PROJECT_PACKAGES])
    bindir = tree / "usr/local/bin"
    bindir.mkdir(parents=True)
    for name, target in _scripts(src / "pyproject.toml").items():
        module, _, func = target.partition(":")
        script = bindir / name
        script.write_text(f"#!/usr/bin/python3\nimport sys\nfrom {module} import {func}\n"
                          f"sys.exit({func}())\n")
        script.chmod(0o755)
    _bake(tree, bake)
    _normalize_modes(tree)
    if bake.token:  # the image then holds a secret
        (tree / "etc/cdp/defaults.json").chmod(0o600)


def _normalize_modes(tree: Path) -> None:
    """0755 for directories and executables, 0644 for other files, whatever the builder's
    umask and the checkout's modes: the archive stays reproducible, and its directory
    entries (/usr, /etc, ...) set the modes of the base layer's directories at unpacking."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, 0o755 if mode & 0o100 else 0o644)


def _bake(tree: Path, bake: Bake) -> None:
    defaults = bake.defaults()
    if not defaults:
        return
    etc = tree / "etc/cdp"
    etc.mkdir(parents=True)
    for path, dest in ((bake.ca, "ca.pem"), (bake.answers, "answers" + (
            bake.answers.suffix if bake.answers else ""))):
        if path is None:
            continue
        if not path.is_file():
            raise UsageError(f"{path}: no such file to bake into the image")
        shutil.copyfile(path, etc / dest)
    (etc / "defaults.json").write_text(json.dumps(defaults, indent=1, sort_keys=True) + "\n")
