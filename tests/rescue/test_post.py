"""Post-steps and saved plans through the real `rescue` command: an ext4 filesystem on an
enlarged partition is grown (and stays clean, its files intact); `rescue restore --plan`
executes a saved plan after checking its targets again."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.loopdev import attached_loop

from .conftest import MIB, PASS
from .test_restore import check_equal, digest, make_source, partitions, point_of, sh


def rescue(repo_host: dict[str, Any], tmp_path: Path, *args: str
           ) -> subprocess.CompletedProcess[str]:
    srv = repo_host["server"]
    (tmp_path / "pass").write_text(PASS)
    return subprocess.run(
        [sys.executable, "-m", "rescue", *args, "--server", srv.url, "--ca", str(srv.ca_path),
         "--token", repo_host["token"], "--passphrase-file", str(tmp_path / "pass")],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def fs_source(tmp_path: Path, fstype: str = "ext4", size: int = 64 * MIB) -> Path:
    """A GPT disk whose last partition holds a filesystem labelled root with one file."""
    source = tmp_path / "vda.img"
    sh("truncate", "-s", str(size), str(source))
    sh("sgdisk", "-n1:2048:+8M", "-t1:ef00", "-n2:0:0", "-t2:8300", "-c2:root", str(source))
    payload = tmp_path / "hello.txt"
    payload.write_bytes(os.urandom(3 * MIB))
    part = partitions(source)[1]
    fs = tmp_path / "fs.img"
    sh("truncate", "-s", str(part["size"] * 512), str(fs))
    if fstype == "ext4":
        tree = tmp_path / "tree"
        tree.mkdir()
        shutil.copy(payload, tree / "hello.txt")
        sh("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(fs))
    else:
        sh("mkfs.xfs", "-q", "-f", "-L", "root", str(fs))
        with mounted(str(fs), tmp_path / "mnt") as mnt:
            shutil.copy(payload, mnt / "hello.txt")
    sh("dd", f"if={fs}", f"of={source}", "bs=1M", f"seek={part['start'] * 512}",
       "oflag=seek_bytes", "conv=notrunc,sparse", "status=none")
    return source


@contextlib.contextmanager
def mounted(device: str, mnt: Path, options: str | None = None) -> Iterator[Path]:
    """`device` (an image file through a loop device) mounted on `mnt` with `options`."""
    mnt.mkdir(exist_ok=True)
    sh("mount", "-o", options or ("loop" if not device.startswith("/dev/") else "defaults"),
       device, str(mnt))
    try:
        yield mnt
    finally:
        sh("umount", str(mnt))


def fs_size(fstype: str, device: str, mnt: Path) -> int:
    """Bytes the filesystem spans, as its own tools say."""
    if fstype == "ext4":
        info = dict(line.split(":", 1) for line in sh("dumpe2fs", "-h", device).splitlines()
                    if ":" in line)
        return int(info["Block count"]) * int(info["Block size"])
    data = next(line for line in sh("xfs_info", str(mnt)).splitlines()
                if line.startswith("data"))
    fields = dict(f.split("=") for f in data.replace(",", " ").split() if "=" in f)
    return int(fields["blocks"]) * int(fields["bsize"])


@pytest.mark.parametrize("fstype,size", [("ext4", 64 * MIB), ("xfs", 320 * MIB)])
def test_grow_filesystem_on_enlarged_partition(repo_host: dict[str, Any], tmp_path: Path,
                                               fstype: str, size: int) -> None:
    if fstype == "xfs" and not shutil.which("mkfs.xfs"):
        pytest.skip("xfsprogs is not installed")
    source = fs_source(tmp_path, fstype, size)
    point_of(repo_host, source)
    target = tmp_path / "big.img"
    sh("truncate", "-s", str(size + 64 * MIB), str(target))
    proc = rescue(repo_host, tmp_path, "restore", "--host", "web1", "--map",
                  f"vda.img={target}", "--resize", "grow-last", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert f"grow the {fstype} filesystem of partition 2 to" in proc.stdout
    part = partitions(target)[1]
    assert part["start"] + part["size"] == (size + 64 * MIB) // 512 - 33
    with attached_loop(target, "-o", str(part["start"] * 512),
                       "--sizelimit", str(part["size"] * 512)) as loop:
        if fstype == "ext4":
            sh("e2fsck", "-fn", loop)  # clean: exit 0
        else:
            sh("xfs_repair", "-n", loop)
        with mounted(loop, tmp_path / "check") as mnt:
            assert (mnt / "hello.txt").read_bytes() == (tmp_path / "hello.txt").read_bytes()
            fs_bytes = fs_size(fstype, loop, mnt)
        # resize2fs and xfs_growfs may leave a last group too small to be worth adding.
        assert part["size"] * 512 - 4 * MIB <= fs_bytes <= part["size"] * 512


def test_xfs_grows_while_a_filesystem_of_its_uuid_is_mounted(repo_host: dict[str, Any],
                                                            tmp_path: Path) -> None:
    """A restore into an image file on the protected machine itself: its XFS, the same
    UUID as the restored one, is mounted there. XFS refuses to mount a second filesystem
    of one UUID, so the grow mounts with nouuid instead of failing the restore."""
    if not shutil.which("mkfs.xfs"):
        pytest.skip("xfsprogs is not installed")
    size = 320 * MIB
    source = fs_source(tmp_path, "xfs", size)
    point_of(repo_host, source)
    target = tmp_path / "big.img"
    sh("truncate", "-s", str(size + 64 * MIB), str(target))
    orig = partitions(source)[1]
    with attached_loop(source, "-o", str(orig["start"] * 512),
                       "--sizelimit", str(orig["size"] * 512)) as loop, \
            mounted(loop, tmp_path / "original"):
        proc = rescue(repo_host, tmp_path, "restore", "--host", "web1", "--map",
                      f"vda.img={target}", "--resize", "grow-last", "--yes")
    assert proc.returncode == 0, proc.stderr
    part = partitions(target)[1]
    with attached_loop(target, "-o", str(part["start"] * 512),
                       "--sizelimit", str(part["size"] * 512)) as loop:
        sh("xfs_repair", "-n", loop)
        with mounted(loop, tmp_path / "check") as mnt:
            assert (mnt / "hello.txt").read_bytes() == (tmp_path / "hello.txt").read_bytes()
            assert fs_size("xfs", loop, mnt) >= part["size"] * 512 - 4 * MIB


def test_no_grow_fs_leaves_filesystem_size(repo_host: dict[str, Any], tmp_path: Path) -> None:
    source = fs_source(tmp_path)
    point_of(repo_host, source)
    target = tmp_path / "big.img"
    sh("truncate", "-s", str(128 * MIB), str(target))
    proc = rescue(repo_host, tmp_path, "restore", "--host", "web1", "--map",
                  f"vda.img={target}", "--resize", "grow-last", "--no-grow-fs", "--yes")
    assert proc.returncode == 0, proc.stderr
    src, dst = partitions(source)[1], partitions(target)[1]
    with open(source, "rb") as a, open(target, "rb") as b:
        a.seek(src["start"] * 512)
        b.seek(dst["start"] * 512)
        assert a.read(src["size"] * 512) == b.read(src["size"] * 512)


def test_restore_saved_plan_rechecks_targets(repo_host: dict[str, Any],
                                             tmp_path: Path) -> None:
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    make_source(source, "gpt")
    point_of(repo_host, source)
    sh("truncate", "-s", str(64 * MIB), str(target))
    saved = tmp_path / "plan.json"
    proc = rescue(repo_host, tmp_path, "plan", "--host", "web1", "--map",
                  f"vda.img={target}", "--save", str(saved))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(saved.read_text())["disks"][0]["target"]["path"] == str(target)

    proc = rescue(repo_host, tmp_path, "restore", "--plan", str(saved), "--map",
                  f"vda.img={target}", "--yes")
    assert (proc.returncode, proc.stderr) == (
        2, f"rescue: error: --plan {saved} already decides --map: drop them\n")

    sh("truncate", "-s", str(65 * MIB), str(target))  # not the disk the plan was made for
    before = digest(target)
    proc = rescue(repo_host, tmp_path, "restore", "--plan", str(saved), "--yes")
    assert proc.returncode == 11
    assert proc.stderr == (
        f"rescue: error: target {target} is not the disk the plan was made for (size "
        f"{65 * MIB}, serial None; the plan expects size {64 * MIB}, serial None): plan "
        "again\n")
    assert digest(target) == before

    sh("truncate", "-s", str(64 * MIB), str(target))
    proc = rescue(repo_host, tmp_path, "restore", "--plan", str(saved), "--yes")
    assert proc.returncode == 0, proc.stderr
    check_equal(source, target)
