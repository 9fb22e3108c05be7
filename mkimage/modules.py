"""Curating the kernel's modules: keep the configured directories and every module they
depend on (modules.dep), drop the rest, then let depmod rebuild the indexes.

`select_modules` is a pure function over the text of modules.dep, tested without a kernel."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from cdpcore.runcmd import run


def _wanted(path: str, dirs: Iterable[str], excludes: Iterable[str]) -> bool:
    rel = path.removeprefix("kernel/")
    if not path.startswith("kernel/"):
        return True  # out-of-tree ("updates/", "extra/") modules installed on purpose
    def under(prefix: str) -> bool:
        return rel == prefix or rel.startswith(prefix.rstrip("/") + "/") or (
            rel.startswith(prefix) and rel[len(prefix):].startswith(".")  # foo.ko.xz
        )
    return any(under(d) for d in dirs) and not any(under(e) for e in excludes)


def select_modules(modules_dep: str, dirs: Iterable[str], excludes: Iterable[str]) -> set[str]:
    """Module paths (as modules.dep names them) to keep: the wanted ones and their
    dependencies, transitively."""
    deps: dict[str, list[str]] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        deps[mod.strip()] = rest.split()
    dirs, excludes = list(dirs), list(excludes)
    keep: set[str] = set()
    todo = [m for m in deps if _wanted(m, dirs, excludes)]
    while todo:
        mod = todo.pop()
        if mod in keep:
            continue
        keep.add(mod)
        todo.extend(deps.get(mod, []))
    return keep


def curate(root: Path, dirs: Iterable[str], excludes: Iterable[str]) -> str:
    """Reduce root's /lib/modules to the selection; returns the kernel version."""
    moddir = root / "usr/lib/modules"
    versions = sorted(p.name for p in moddir.iterdir() if p.is_dir())
    if len(versions) != 1:
        raise RuntimeError(f"expected one kernel in {moddir}, found {versions}")
    version = versions[0]
    kdir = moddir / version
    keep = select_modules((kdir / "modules.dep").read_text(), dirs, excludes)
    for ko in sorted(kdir.rglob("*.ko*")):
        if str(ko.relative_to(kdir)) not in keep:
            ko.unlink()
    # Empty directories left behind are noise in the image.
    for d in sorted((p for p in kdir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    run(["depmod", "-b", str(root), version])
    return version


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
