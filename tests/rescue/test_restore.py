"""End-to-end restores from a real CDP server process (the `cdp_server` fixture) onto
image files: real points made with cdpcore, real partition tables, byte-exact checks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.errors import NotFoundError, SafetyError, TargetError, WrongKeyError
from cdpcore.keys import new_master_key, recovery_key
from hotcopy import capture
from rescue import partition
from rescue.engine import Engine, ExecuteOptions
from rescue.repo import Repository

from .conftest import MIB, PASS
from .pointmaker import make_point


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def make_source(path: Path, table: str, size: int = 64 * MIB) -> None:
    """A disk image with a boot area, an ESP-like, a swap and a data partition."""
    sh("truncate", "-s", str(size), str(path))
    if table == "gpt":
        sh("sgdisk", "-n1:2048:+8M", "-t1:ef00", "-c1:EFI", "-n2:0:+4M", "-t2:8200",
           "-c2:swap", "-n3:0:0", "-t3:8300", "-c3:root", str(path))
    else:
        sh("parted", "-s", str(path), "mklabel", "msdos", "mkpart", "primary", "fat32",
           "1MiB", "9MiB", "set", "1", "boot", "on", "mkpart", "primary", "linux-swap",
           "9MiB", "13MiB", "mkpart", "primary", "ext4", "13MiB", "100%")
    rnd = os.urandom(5 * MIB)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"GRUB boot code stand-in bytes")
        # GRUB's core image, embedded after the table and before the first partition
        f.seek(table_end(table))
        f.write(os.urandom(2048 * 512 - table_end(table)))
        f.seek(2048 * 512 + 4096)
        f.write(rnd[:MIB])
        f.seek(13 * MIB + 1 * MIB)
        f.write(rnd)
        f.seek(size - 4 * MIB)
        f.write(rnd[:3 * MIB])


def scripted_source(path: Path, table: str) -> None:
    """A 64 MiB disk image with the sfdisk script `table` (partition lines start with
    their number, which names the partition of this image) and boot code stand-in bytes."""
    sh("truncate", "-s", str(64 * MIB), str(path))
    script = "".join(f"{path}{line}\n" if line[0].isdigit() else f"{line}\n"
                     for line in table.splitlines())
    subprocess.run(["sfdisk", "--quiet", str(path)], input=script, text=True, check=True)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"GRUB boot code stand-in bytes")


def table_end(table: str) -> int:
    """Where a 512-byte-sector disk's partition table ends: the MBR, or the protective MBR,
    the GPT header and its 128-entry array."""
    return 34 * 512 if table == "gpt" else 512


def partitions(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(sh("sfdisk", "--json", str(path)))["partitiontable"]["partitions"])


def region(path: Path, start: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def point_of(repo_host: dict[str, Any], source: Path) -> Any:
    return make_point(repo_host["agent"], "web1", repo_host["codec"], [str(source)])


def check_equal(source: Path, target: Path) -> None:
    src_parts, dst_parts = partitions(source), partitions(target)
    assert len(src_parts) == len(dst_parts)
    for sp, dp in zip(src_parts, dst_parts, strict=True):
        for key in ("type", "uuid", "name"):
            assert sp.get(key) == dp.get(key)
        assert dp["start"] == sp["start"]
        if sp["type"] not in ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "82"):
            assert region(source, sp["start"] * 512, sp["size"] * 512) == \
                region(target, dp["start"] * 512, sp["size"] * 512)
    assert region(source, 0, 440) == region(target, 0, 440)  # boot code
    # the rest of the boot area: what GRUB embeds between the table and the first partition
    label = json.loads(sh("sfdisk", "--json", str(source)))["partitiontable"]["label"]
    start = table_end("gpt" if label == "gpt" else "msdos")
    length = min(p["start"] for p in src_parts) * 512 - start
    assert region(source, start, length) == region(target, start, length)


@pytest.mark.parametrize("table", ["gpt", "msdos"])
def test_restore_same_size_byte_exact(repo_host: dict[str, Any], tmp_path: Path,
                                      table: str) -> None:
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    make_source(source, table)
    point_of(repo_host, source)
    sh("truncate", "-s", str(64 * MIB), str(target))
    target.write_bytes(os.urandom(64 * MIB))  # stale content must not survive
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)}, verify="read-back")
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
    assert report.ok
    check_equal(source, target)
    swap = next(p for p in partitions(source) if p["type"] in
                ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "82"))
    assert "TYPE=swap" in sh("blkid", "-p", "-o", "export", "-O", str(swap["start"] * 512),
                             str(target))
    if table == "msdos":
        assert json.loads(sh("sfdisk", "--json", str(source)))["partitiontable"]["id"] == \
            json.loads(sh("sfdisk", "--json", str(target)))["partitiontable"]["id"]


GAPPED_TABLES = {
    # cloud images: 14 BIOS boot, 15 ESP, 1 root after them
    "gpt": "label: gpt\n"
           "14 : start=2048, size=8192, type=21686148-6449-6E6F-744E-656564454649\n"
           "15 : start=10240, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n"
           "1 : start=26624, size=102400, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
    # no partition 2, and an LBA extended container (type 0x0f) holding partition 5
    "msdos": "label: dos\n"
             "1 : start=2048, size=24576, type=83\n"
             "3 : start=26624, size=104448, type=f\n"
             "5 : start=28672, size=102400, type=83\n",
}


@pytest.mark.parametrize("table", sorted(GAPPED_TABLES))
def test_partition_numbers_with_gaps_are_restored(repo_host: dict[str, Any], tmp_path: Path,
                                                  table: str) -> None:
    """libparted numbers partitions in the order it adds them; the captured numbers (and
    the extended container's type) come back."""
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    scripted_source(source, GAPPED_TABLES[table])
    with open(source, "r+b") as f:
        f.seek(table_end(table))
        f.write(os.urandom(2048 * 512 - table_end(table)))
        for part in partitions(source):
            if part["type"] not in ("f", "5"):
                f.seek(part["start"] * 512 + 4096)
                f.write(os.urandom(MIB))
    point_of(repo_host, source)
    sh("truncate", "-s", str(64 * MIB), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)})
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
    assert report.ok
    numbered = [(p["node"].removeprefix(str(target)), p["type"]) for p in partitions(target)]
    assert numbered == [(p["node"].removeprefix(str(source)), p["type"])
                        for p in partitions(source)]
    check_equal(source, target)


AWKWARD_NAMES = {
    1: 'a "quoted", name;',
    3: "back\\slash \\x41 kept",  # a backslash, and an escape sfdisk must not decode
    7: " \u00fcn\u00ef $`c=d ",  # blanks at both ends, UTF-8, shell and script characters
}


def test_awkward_gpt_partition_names_are_restored(repo_host: dict[str, Any],
                                                  tmp_path: Path) -> None:
    """Names go into the sfdisk script that writes the table: quotes, commas, semicolons,
    backslashes, blanks at the ends and non-ASCII letters come back as they were."""
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    sh("truncate", "-s", str(64 * MIB), str(source))
    sh("sgdisk", *(arg for number, name in AWKWARD_NAMES.items() for arg in (
        f"-n{number}:0:+4M", f"-t{number}:8300", f"-c{number}:{name}")), str(source))
    point_of(repo_host, source)
    sh("truncate", "-s", str(64 * MIB), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)})
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
    assert report.ok, report.errors
    assert {int(p["node"].removeprefix(str(target))): p["name"] for p in partitions(target)} \
        == AWKWARD_NAMES
    check_equal(source, target)


def test_a_format_version_1_point_restores_byte_exact(repo_host: dict[str, Any],
                                                       tmp_path: Path) -> None:
    """Points written before format version 2 (HMAC-SHA256 chunk IDs) stream and verify in
    the scheme their manifest declares."""
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    make_source(source, "gpt")
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(source)], version=1)
    sh("truncate", "-s", str(64 * MIB), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)}, verify="read-back")
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
    assert report.ok and all(v.verified == "read-back" for v in report.volumes)
    check_equal(source, target)


def test_cli_restore_to_larger_target_grows_last_with_backup_gpt(
        repo_host: dict[str, Any], cdp_server: Any, tmp_path: Path) -> None:
    source, target = tmp_path / "vda.img", tmp_path / "big.img"
    make_source(source, "gpt")
    point_of(repo_host, source)
    sh("truncate", "-s", str(96 * MIB), str(target))
    (tmp_path / "pass").write_text(PASS + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rescue", "restore", "--server", cdp_server.url,
         "--ca", cdp_server.ca_path, "--token", repo_host["token"], "--host", "web1",
         "--point", "latest", "--map", f"vda.img={target}", "--resize", "grow-last",
         "--passphrase-file", str(tmp_path / "pass"), "--yes"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    check_equal(source, target)
    assert "No problems found" in sh("sgdisk", "-v", str(target))
    table = json.loads(sh("sfdisk", "--json", str(target)))["partitiontable"]
    assert table["lastlba"] == 96 * MIB // 512 - 34  # backup GPT at the new end
    last = table["partitions"][-1]
    assert last["start"] + last["size"] - 1 == 96 * MIB // 512 - 34


def test_too_small_target_refused_before_writing(repo_host: dict[str, Any],
                                                  tmp_path: Path) -> None:
    source, target = tmp_path / "vda.img", tmp_path / "small.img"
    make_source(source, "gpt")
    point_of(repo_host, source)
    sh("truncate", "-s", str(32 * MIB), str(target))
    before = digest(target)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with pytest.raises(SafetyError) as err:
        engine.plan("latest", {"vda.img": str(target)})
    assert str(err.value) == (
        f"target {target} is too small for source disk vda.img: it has 32.0 MiB (33554432 "
        "bytes), the layout needs at least 64.0 MiB (67108864 bytes)")
    assert digest(target) == before


def test_dry_run_leaves_target_untouched(repo_host: dict[str, Any], tmp_path: Path) -> None:
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    make_source(source, "gpt")
    point_of(repo_host, source)
    target.write_bytes(os.urandom(64 * MIB))
    before = digest(target)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)})
    report = engine.execute(plan, ExecuteOptions(dry_run=True, state_dir=str(tmp_path)))
    assert report.dry_run and not report.volumes
    assert digest(target) == before


def test_wrong_passphrase_unknown_host_and_point(repo_host: dict[str, Any]) -> None:
    with pytest.raises(WrongKeyError, match="wrong passphrase"):
        Repository.open(repo_host["restore"], "web1", "not the passphrase")
    with pytest.raises(NotFoundError):
        Repository.open(repo_host["restore"], "nosuchhost", PASS)
    with pytest.raises(WrongKeyError, match="recovery key belongs to another repository"):
        Repository.open(repo_host["restore"], "web1", recovery_key(new_master_key()))
    repo = Repository.open(repo_host["restore"], "web1", PASS)
    with pytest.raises(NotFoundError, match="there are no recovery points of host 'web1'"):
        repo.choose("latest")


def test_a_recovery_key_opens_a_host_whose_key_file_is_damaged() -> None:
    """The recovery key is what opens a repository without its key file: a key file the
    server returns damaged has no fingerprint to check it against, and must not refuse it
    (a recovery key of another repository then fails on the first sealed manifest)."""
    master = new_master_key()

    class DamagedKeyFile:  # Repository.open reads only the key file
        def get_key(self, host: str) -> dict[str, Any]:
            return {"version": 1, "kdf": "damaged", "cipher": "aes-256-gcm"}

    repo = Repository.open(DamagedKeyFile(), "web1", recovery_key(master))  # type: ignore[arg-type]
    block = os.urandom(4096)
    assert repo.codec.seal_block(block)[0] == \
        BlobCodec(KeySet.from_master(master)).seal_block(block)[0]


def restore_argv(cdp_server: Any, repo_host: dict[str, Any], tmp_path: Path,
                 maps: list[str], *options: str) -> list[str]:
    """`rescue restore` of web1's latest point with `maps`, one worker, and `options`."""
    (tmp_path / "pass").write_text(PASS)
    return [sys.executable, "-m", "rescue", "restore", "--server", cdp_server.url,
            "--ca", cdp_server.ca_path, "--token", repo_host["token"], "--host", "web1",
            *[arg for m in maps for arg in ("--map", m)],
            "--passphrase-file", str(tmp_path / "pass"), "--yes", "--workers", "1", *options]


def started(argv: list[str], state: Path, volume: str | None = None
            ) -> subprocess.Popen[bytes]:
    """`argv` running, once its resume state in `state` says blocks of `volume` (or of
    any volume) are written."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        files = list(state.glob("rescue-web1-*.state.json"))
        try:
            written = json.loads(files[0].read_text() or "{}").get("volume_blocks", {}) \
                if files else {}
        except ValueError:
            written = {}  # caught while it was being replaced
        if written.get(volume) if volume else written:
            return proc
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    raise AssertionError(f"{volume or 'no volume'} was not being written (the restore "
                         f"ended: {proc.returncode})")


def test_resume_after_killed_restore_is_byte_exact(repo_host: dict[str, Any], cdp_server: Any,
                                                   tmp_path: Path) -> None:
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    sh("truncate", "-s", str(160 * MIB), str(source))
    with open(source, "r+b") as f:
        f.write(os.urandom(160 * MIB))  # a whole-disk volume: no table
    point_of(repo_host, source)
    sh("truncate", "-s", str(160 * MIB), str(target))
    argv = restore_argv(cdp_server, repo_host, tmp_path, [f"vda.img={target}"],
                        "--checkpoint-mib", "4")
    state = tmp_path  # the state lives next to an image-file target
    proc = started(argv, state)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = json.loads(next(state.glob("rescue-web1-*.state.json")).read_text())
    done = saved["volume_blocks"]["vda.img:whole"]
    assert 0 < done < 160 * MIB // 16384
    again = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr
    assert digest(source) == digest(target)
    report = json.loads(next(state.glob("rescue-web1-*.report.json")).read_text())
    assert report["volumes"][0]["resumed"] == done * 16384
    assert not list(state.glob("rescue-web1-*.state.json"))


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "Input/output error"),
                                     RuntimeError("libparted refused the table")],
                         ids=["target-io", "unexpected"])
def test_a_failure_outside_the_known_errors_leaves_a_failed_report(
        repo_host: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        failure: Exception) -> None:
    """The report file must never say ok when an action failed, whatever it raised; an
    I/O error of the target is a TargetError (exit 12: a rerun resumes)."""
    source, target, state = tmp_path / "vda.img", tmp_path / "new.img", tmp_path / "st"
    make_source(source, "gpt")
    point_of(repo_host, source)
    sh("truncate", "-s", str(64 * MIB), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)})

    def failing(path: str, layout: Any) -> None:
        raise failure

    monkeypatch.setattr(partition, "write_table", failing)
    expected = TargetError if isinstance(failure, OSError) else RuntimeError
    with pytest.raises(expected) as caught:
        engine.execute(plan, ExecuteOptions(state_dir=str(state)))
    report = json.loads(next(state.glob("rescue-web1-*.report.json")).read_text())
    assert report["ok"] is False
    table = next(a for a in plan.actions if a.type == "partition_table")
    want = f"{table.description}: {failure}"
    if expected is TargetError:
        want = f"could not {want}"
        assert str(caught.value) == want
    assert report["errors"] == [want]
    assert {"id": table.id, "status": "failed", "error": want}.items() <= \
        next(a for a in report["actions"] if a["id"] == table.id).items()


@pytest.mark.parametrize("pmbr_boot", [True, False], ids=["pmbr_boot", "no-pmbr_boot"])
def test_the_protective_mbr_boot_flag_is_kept(repo_host: dict[str, Any], tmp_path: Path,
                                              pmbr_boot: bool) -> None:
    """parted's `pmbr_boot` (the protective MBR's entry marked active: some BIOSes boot a
    GPT disk only with it, and Anaconda sets it on BIOS machines) lives in the bytes the
    new table rewrites, and sfdisk clears it on every write: it used to be lost."""
    source, target = tmp_path / "vda.img", tmp_path / "big.img"
    make_source(source, "gpt")
    if pmbr_boot:
        sh("parted", "-s", str(source), "disk_set", "pmbr_boot", "on")
    point_of(repo_host, source)
    sh("truncate", "-s", str(96 * MIB), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)}, resize="grow-last",
                       verify="read-back")
    assert engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st"))).ok
    check_equal(source, target)
    assert region(target, 446, 1) == region(source, 446, 1) == \
        (b"\x80" if pmbr_boot else b"\x00")
    flags = [line for line in sh("parted", "-s", str(target), "print").splitlines()
             if line.startswith("Disk Flags:")]
    assert flags == ["Disk Flags: pmbr_boot" if pmbr_boot else "Disk Flags: "]
    assert "No problems found" in sh("sgdisk", "-v", str(target))


def test_two_source_disks_onto_one_file_through_a_symlink_are_refused(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """A symlink (or another spelling of the path) to an image file is the same target: two
    source disks planned onto it would overwrite each other."""
    vda, vdb, target = tmp_path / "vda", tmp_path / "vdb", tmp_path / "t.img"
    for path in (vda, vdb):
        path.write_bytes(os.urandom(4 * MIB))
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(vda), str(vdb)])
    sh("truncate", "-s", str(4 * MIB), str(target))
    (tmp_path / "link.img").symlink_to(target)
    before = digest(target)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with pytest.raises(SafetyError) as err:
        engine.plan("latest", {"vda": str(target), "vdb": str(tmp_path / "link.img")})
    assert str(err.value) == (f"target {target} is chosen for two source disks, vda and "
                              "vdb: map each source disk to a disk of its own")
    assert digest(target) == before


def test_gpt_attribute_bits_are_kept(repo_host: dict[str, Any], tmp_path: Path) -> None:
    """A GPT entry's attribute bits 48-63 belong to its type (systemd's no-auto, read-only
    and grow-fs; Microsoft's hidden and no-drive-letter); no parted flag carries them, and
    they used to come back cleared. The source's entries are in its restored boot area."""
    source, target = tmp_path / "vda.img", tmp_path / "big.img"
    make_source(source, "gpt")
    sh("sfdisk", "--part-attrs", str(source), "1", "RequiredPartition,LegacyBIOSBootable")
    sh("sfdisk", "--part-attrs", str(source), "3", "NoBlockIOProtocol,GUID:59,60,63")
    point_of(repo_host, source)
    sh("truncate", "-s", str(96 * MIB), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)}, resize="grow-last",
                       verify="read-back")
    assert engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st"))).ok
    check_equal(source, target)
    assert [p.get("attrs") for p in partitions(target)] == [
        "RequiredPartition LegacyBIOSBootable", None,
        "NoBlockIOProtocol GUID:59,60,63"]


EMPTY_EXTENDED = {
    # the extended container is the disk's only partition
    "extended-only": "label: dos\n1 : start=2048, size=129024, type=5\n",
    # an empty extended container after the last primary partition
    "primary-then-extended": "label: dos\n"
                             "1 : start=2048, size=16384, type=83\n"
                             "2 : start=18432, size=112640, type=5\n",
}


def dump(path: Path) -> list[str]:
    """`sfdisk --dump` of an image file without its name (the device line, node names)."""
    return [line.replace(str(path), "") for line in sh("sfdisk", "--dump", str(path))
            .splitlines() if not line.startswith("device:")]


@pytest.mark.parametrize("layout", sorted(EMPTY_EXTENDED))
def test_an_empty_extended_container_round_trips(repo_host: dict[str, Any], tmp_path: Path,
                                                 layout: str) -> None:
    """A disk whose MBR holds an extended container without logical partitions is
    captured as a partitioned disk (it used to be one whole volume: libparted refused the
    table copy, which held no EBR for the container) and comes back with the same table,
    its data and boot area byte-exact, and a container capture reads again."""
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    scripted_source(source, EMPTY_EXTENDED[layout])
    with open(source, "r+b") as f:
        f.seek(512)
        f.write(os.urandom(2047 * 512))  # GRUB's core image, after the MBR
        if layout != "extended-only":  # a container's free space, as any, is not copied
            f.seek(2048 * 512 + 4096)
            f.write(os.urandom(MIB))
    point_of(repo_host, source)
    target.write_bytes(os.urandom(64 * MIB))  # stale content must not survive
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)}, verify="read-back")
    planned = plan.disks[0].layout
    assert (planned.table, planned.volume) == ("msdos", None)
    assert [(p.kind, p.role) for p in planned.partitions][-1] == ("extended", "extended")
    assert engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st"))).ok
    assert dump(target) == dump(source)
    check_equal(source, target)
    container = partitions(target)[-1]["start"] * 512
    assert region(target, container, 512) == capture.EMPTY_EBR  # no stale bytes
    again = capture.capture_disk(str(target)).disk
    assert [(p.number, p.start, p.length, p.kind, p.mbr_type) for p in again.partitions] \
        == [(p.number, p.start, p.length, p.kind, p.mbr_type) for p in planned.partitions]


@pytest.mark.parametrize("reader", ["table copy", "disk itself"])
@pytest.mark.parametrize("layout", sorted(EMPTY_EXTENDED))
def test_grow_last_grows_an_empty_extended_container(repo_host: dict[str, Any],
                                                     tmp_path: Path, layout: str, reader: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An extended container without logical partitions that ends last is what grow-last
    grows: the plan used to fail (max() of nothing) or grow the primary into the
    container, which libparted refused only after the target was wiped."""
    if reader == "disk itself":
        # The layout as captured where pyparted reads the disk itself (4Kn disks, an
        # sfdisk without --backup-pt-sectors).
        monkeypatch.setattr(capture, "read_table",
                            lambda path, *_: capture.parted_partitions(path))
    source, target = tmp_path / "vda.img", tmp_path / "big.img"
    scripted_source(source, EMPTY_EXTENDED[layout])
    with open(source, "r+b") as f:
        f.seek(2048 * 512 + 4096)
        f.write(os.urandom(MIB))
    point_of(repo_host, source)
    sh("truncate", "-s", str(96 * MIB), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)}, resize="grow-last",
                       verify="read-back")
    assert engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st"))).ok
    got = [(p["start"], p["size"], p["type"]) for p in partitions(target)]
    # 96 MiB: sectors 0-196607; the container ends at the last one
    assert got == ([(2048, 194560, "5")] if layout == "extended-only"
                   else [(2048, 16384, "83"), (18432, 178176, "5")])
    assert region(source, 0, 440) == region(target, 0, 440)
    assert region(source, 512, 2047 * 512) == region(target, 512, 2047 * 512)
    if layout != "extended-only":
        assert region(source, 2048 * 512, 16384 * 512) == region(target, 2048 * 512,
                                                                 16384 * 512)


def test_two_source_disks_onto_one_file_through_a_hard_link_are_refused(
        repo_host: dict[str, Any], tmp_path: Path) -> None:
    """A hard link to an image file is the same file under a path of its own (its real
    path is not the file's): two source disks planned onto it would overwrite each other."""
    vda, vdb, target = tmp_path / "vda", tmp_path / "vdb", tmp_path / "t.img"
    link = tmp_path / "link.img"
    for path in (vda, vdb):
        path.write_bytes(os.urandom(4 * MIB))
    make_point(repo_host["agent"], "web1", repo_host["codec"], [str(vda), str(vdb)])
    sh("truncate", "-s", str(4 * MIB), str(target))
    os.link(target, link)
    before = digest(target)
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    with pytest.raises(SafetyError) as err:
        engine.plan("latest", {"vda": str(target), "vdb": str(link)})
    assert str(err.value) == (f"targets {target} and {link} are one file (hard links): it "
                              "is chosen for two source disks, vda and vdb: map each source "
                              "disk to a disk of its own")
    assert digest(target) == before


def resized_gpt_source(source: Path) -> dict[str, Any]:
    """A 64 MiB disk image whose GPT was resized to 256 entries and holds partitions 1,
    200 (attribute bit 60 set) and 3, in this order on the disk, and GRUB's stand-in
    bytes after the entries; its `sfdisk --json` table."""
    sh("truncate", "-s", str(64 * MIB), str(source))
    sh("sgdisk", "--resize-table=256", "-n1:2048:+8M", "-t1:ef00", "-c1:EFI",
       "-n200:0:+4M", "-t200:8300", "-c200:far", "-A200:set:60",
       "-n3:0:0", "-t3:8300", "-c3:root", str(source))
    with open(source, "r+b") as f:
        f.seek(66 * 512)  # GRUB's core image, after the 256-entry array (sectors 2-65)
        f.write(os.urandom((2048 - 66) * 512))
        for part in partitions(source):
            f.seek(part["start"] * 512 + 4096)
            f.write(os.urandom(MIB))
    table: dict[str, Any] = json.loads(sh("sfdisk", "--json", str(source)))["partitiontable"]
    assert (table["table-length"], table["firstlba"]) == ("256", 66)
    return table


@pytest.mark.parametrize("size", [64 * MIB, 96 * MIB], ids=["same-size", "grow-last"])
def test_a_gpt_of_more_than_128_entries_keeps_its_partition_numbers(
        repo_host: dict[str, Any], tmp_path: Path, size: int) -> None:
    """A GPT resized to 256 entries (`sgdisk --resize-table`, sfdisk's `table-length`)
    holds partition 200: the restore used to write libparted's 128 entries, and renumbering
    to 200 failed after the target was wiped. The new array holds entries up to the
    highest number (200: 50 sectors), its entries byte-equal to the source's, the
    partitions start past it and end before its backup at the disk's end."""
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    src_table = resized_gpt_source(source)
    point_of(repo_host, source)
    sh("truncate", "-s", str(size), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)}, resize="grow-last",
                       verify="read-back")
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
    assert report.ok, report.errors
    table = json.loads(sh("sfdisk", "--json", str(target)))["partitiontable"]
    last_lba = size // 512 - 1 - 1 - 50
    assert (table["id"], table["table-length"], table["firstlba"], table["lastlba"]) == \
        (src_table["id"], "200", 52, last_lba)
    numbered = [(p["node"].removeprefix(str(target)), p["start"], p["uuid"], p["name"],
                 p.get("attrs")) for p in table["partitions"]]
    assert numbered == [("1", 2048, src_table["partitions"][0]["uuid"], "EFI", None),
                        ("3", 26624, src_table["partitions"][1]["uuid"], "root", None),
                        ("200", 18432, src_table["partitions"][2]["uuid"], "far", "GUID:60")]
    assert table["partitions"][1]["start"] + table["partitions"][1]["size"] - 1 == \
        (last_lba if size > 64 * MIB else 131006)
    check_equal(source, target)
    # every entry (the first 200 written anew, the rest zeros) and GRUB's bytes after
    # them; partition 3 (the third entry) ends where grow-last took it
    expected = bytearray(region(source, 1024, 2046 * 512))
    struct.pack_into("<Q", expected, 2 * 128 + 40, last_lba if size > 64 * MIB else 131006)
    assert region(target, 1024, 2046 * 512) == expected
    assert "No problems found" in sh("sgdisk", "-v", str(target))


@pytest.mark.slow  # about 15 s (80-100 s when sfdisk wrote each field of each partition)
def test_a_gpt_of_more_than_128_partitions_is_restored(repo_host: dict[str, Any],
                                                       tmp_path: Path) -> None:
    """libparted adds at most 128 partitions to a GPT ("Too many primary partitions", after
    the target was wiped): the others are added by sfdisk, numbers, GUIDs and names kept;
    every entry comes back byte-equal."""
    source, target = tmp_path / "vda.img", tmp_path / "new.img"
    scripted_source(source, "label: gpt\ntable-length: 136\nfirst-lba: 2048\n" + "".join(
        f'{n} : start={2048 + (n - 1) * 256}, size=256, name="part {n}"\n'
        for n in range(1, 131)))
    with open(source, "r+b") as f:
        for n in (1, 129, 130):
            f.seek((2048 + (n - 1) * 256) * 512)
            f.write(os.urandom(128 * 512))
    point_of(repo_host, source)
    sh("truncate", "-s", str(64 * MIB), str(target))
    engine = Engine(Repository.open(repo_host["restore"], "web1", PASS))
    plan = engine.plan("latest", {"vda.img": str(target)}, verify="read-back")
    report = engine.execute(plan, ExecuteOptions(state_dir=str(tmp_path / "st")))
    assert report.ok, report.errors
    table = json.loads(sh("sfdisk", "--json", str(target)))["partitiontable"]
    assert (table["table-length"], table["firstlba"]) == ("132", 35)
    assert [line for line in dump(target) if " : " in line] == \
        [line for line in dump(source) if " : " in line]
    assert len(partitions(target)) == 130
    check_equal(source, target)
    assert region(target, 1024, 2046 * 512) == region(source, 1024, 2046 * 512)
    assert "No problems found" in sh("sgdisk", "-v", str(target))
