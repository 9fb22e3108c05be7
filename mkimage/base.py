"""The base layer: a Debian root built with mmdebstrap, stripped, with curated kernel
modules and the project's Python dependencies, packed as base.cpio.zst beside the kernel.

Built once per key (a hash of the package list, suite, architecture, mirror, Python
requirements, epoch and the code of this module and its helpers) and kept under
CACHE/base-KEY/; downloaded .deb files and wheels are kept under CACHE/apt and CACHE/pip
so even a rebuild of the base downloads nothing new."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cdpcore.runcmd import run

from . import config, cpio, modules

#: Fixed default for SOURCE_DATE_EPOCH (2024-01-01): the base must not change with the clock.
DEFAULT_EPOCH = 1704067200
#: glibc of Debian bookworm (2.36): wheels built for it or older run in the image.
GLIBC_MINOR = 36
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


@dataclass(frozen=True)
class Base:
    dir: Path
    kernel_version: str

    @property
    def vmlinuz(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def cpio(self) -> Path:
        return self.dir / "base.cpio.zst"

    @property
    def sizes(self) -> dict[str, int]:
        data: dict[str, int] = json.loads((self.dir / "sizes.json").read_text())
        return data


def python_requirements(pyproject: Path) -> list[str]:
    """The image's Python dependencies: the project's own plus the TUI's, minus those
    Debian provides (config.PIP_SKIP)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["tui"])
    return sorted(r for r in reqs if not any(r.startswith(s) for s in config.PIP_SKIP))


def host_apt_sources() -> list[Path]:
    """The build machine's configured APT sources (files apt itself would read)."""
    files = [APT_SOURCES[0]] if APT_SOURCES[0].is_file() else []
    if APT_SOURCES[1].is_dir():
        files += sorted(p for p in APT_SOURCES[1].iterdir()
                        if p.suffix in (".list", ".sources") and p.stat().st_size > 0)
    return files


def cache_key(mirror: str | None, requirements: list[str], epoch: int) -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("base.py", "config.py", "modules.py", "cpio.py"):
        h.update((here / name).read_bytes())
    sources = [mirror] if mirror else [p.read_text() for p in host_apt_sources()]
    h.update(json.dumps([config.SUITE, config.ARCH, list(config.PACKAGES), sources,
                         requirements, epoch]).encode())
    return h.hexdigest()[:16]


def ensure_base(cache: Path, pyproject: Path, mirror: str | None, epoch: int,
                say: Callable[[str], None]) -> Base:
    reqs = python_requirements(pyproject)
    key = cache_key(mirror, reqs, epoch)
    final = cache / f"base-{key}"
    if (final / "sizes.json").is_file():
        say(f"base layer: cached ({final})")
        return Base(final, (final / "kernel-version").read_text().strip())
    say(f"base layer: building {final} (mmdebstrap {config.SUITE}, a few minutes)")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-build-", dir=cache))
    try:
        root = work / "root"
        _debootstrap(root, cache, mirror, epoch)
        out = work / "out"
        out.mkdir()
        version = _finish_root(root, out, cache, reqs)
        sizes = _measure(root)
        cpio.make_cpio(root, out / "base.cpio.zst", epoch)
        sizes["base.cpio.zst"] = (out / "base.cpio.zst").stat().st_size
        (out / "kernel-version").write_text(version + "\n")
        (out / "sizes.json").write_text(json.dumps(sizes, indent=1, sort_keys=True))
        # Renaming the finished directory makes the cache entry appear whole or not at all.
        out.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Base(final, version)


def _debootstrap(root: Path, cache: Path, mirror: str | None, epoch: int) -> None:
    debs = cache / "apt"
    debs.mkdir(parents=True, exist_ok=True)
    argv = ["mmdebstrap", "--variant=essential", "--mode=root", f"--architectures={config.ARCH}",
            "--include=" + ",".join(config.PACKAGES),
            *[f"--dpkgopt=path-exclude={p}" for p in config.DPKG_EXCLUDES],
            # Keep downloaded packages across builds (mmdebstrap(1), "sync-in"/"sync-out").
            "--skip=essential/unlink",
            "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
            f"--setup-hook=sync-in {debs} /var/cache/apt/archives",
            f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
            config.SUITE, str(root)]
    if mirror:
        argv.append(f"deb {mirror} {config.SUITE} main")
    else:
        argv += [str(p) for p in host_apt_sources()]
    run(argv, env={"SOURCE_DATE_EPOCH": str(epoch), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        timeout=3600)


def _finish_root(root: Path, out: Path, cache: Path, reqs: list[str]) -> str:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in {root}/boot, found {kernels}")
    shutil.copyfile(kernels[0], out / "vmlinuz")
    for rel in config.STRIP_PATHS:
        modules.remove_tree(root / rel)
    for pyc in (root / "usr/share").rglob("__pycache__"):
        shutil.rmtree(pyc)
    version = modules.curate(root, config.MODULE_DIRS, config.MODULE_EXCLUDES)
    _install_wheels(root, cache, reqs)
    _configure(root)
    return version


def _install_wheels(root: Path, cache: Path, reqs: list[str]) -> None:
    site = root / config.SITE_DIR
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-warn-script-location",
         "--disable-pip-version-check", "--cache-dir", str(cache / "pip"),
         "--target", str(site), "--only-binary=:all:", "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
         *[f"--platform=manylinux_2_{n}_x86_64" for n in range(GLIBC_MINOR, 16, -1)],
         "--platform=manylinux2014_x86_64", *reqs], timeout=1800)
    modules.remove_tree(site / "bin")
    compile_pyc(site)


def compile_pyc(site: Path, *trees: Path) -> None:
    """Byte-compile trees (default: all of site, the image's SITE_DIR built elsewhere) into
    hash-based .pyc files: valid whatever the files' mtimes, so the cpio stays reproducible.
    -f replaces pip's timestamp-based ones; each file is named by its path in the image, not
    by the build's temporary directory."""
    run([sys.executable, "-m", "compileall", "-q", "-f", "-j0", "--invalidation-mode",
         "unchecked-hash", "-s", str(site), "-p", "/" + config.SITE_DIR,
         *[str(t) for t in trees or (site,)]])


def _configure(root: Path) -> None:
    lvm = root / "etc/lvm/lvm.conf"
    lvm.write_text(lvm.read_text().replace("\t# obtain_device_list_from_udev = 0",
                                           "\tobtain_device_list_from_udev = 0"))
    # Kernel interface names (eth0, ...) so `ip=...:eth0:...` means what the admin expects.
    modules.remove_tree(root / "usr/lib/udev/rules.d/80-net-setup-link.rules")
    (root / "etc/hostname").write_text("cdp-rescue\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 cdp-rescue\n")
    (root / "etc/fstab").write_text("")
    # Not the build host's name servers: DHCP or ip=...:DNS0:DNS1 write the rescue system's.
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)  # may be a symlink into the build host's /run
    resolv.write_text("")


def _measure(root: Path) -> dict[str, int]:
    def du(rel: str) -> int:
        p = root / rel
        return sum(f.lstat().st_size for f in p.rglob("*")) if p.exists() else 0
    return {
        "root": du("."), "kernel modules": du("usr/lib/modules"),
        "python (Debian)": du("usr/lib/python3.11") + du("usr/lib/python3"),
        "python (wheels)": du(config.SITE_DIR), "grub": du("usr/lib/grub"),
        "shared libraries": du("usr/lib/x86_64-linux-gnu"),
    }
