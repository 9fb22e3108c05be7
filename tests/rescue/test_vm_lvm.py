"""LVM restore inside QEMU VMs (this machine has no device-mapper): a source machine with
GPT, an ext4 partition and an LVM PV (VG with a data LV and a swap LV) is backed up by
`cdp-agent` to the real server fixture; a second machine with a blank, larger disk boots
the rescue image and runs `rescue restore` (proportional or grow-last: the PV grows);
inside it the PV, VG and LV UUIDs, the swap UUID and label, and every byte of the data LV
must be as they were.

The guests reach the server on this machine's loopback only through the harness's forward.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdpcore.api import Role
from mkimage.qemu import GUEST_SERVER_IP, VM, Disk, Forward, KernelBoot, VMConfig

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]

MIB = 1024 * 1024
GUEST_PORT = 8443
PASSPHRASE = "vm test: correct horse"
HOST = "lvmhost"
VG = "testvg"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> KernelBoot:
    """The rescue image with this tree's code, built privately (mkimage caches the rest)."""
    out = tmp_path_factory.mktemp("image")
    subprocess.run([sys.executable, "-m", "mkimage", "build", "--out", str(out)], check=True,
                   cwd=Path(__file__).resolve().parents[2])
    return KernelBoot(kernel=out / "vmlinuz", initrd=out / "initrd.img")


SOURCE_SETUP = f"""set -e
sgdisk -n1:2048:+16M -t1:8300 -c1:boot -n2:0:0 -t2:8e00 -c2:lvm /dev/vda >/dev/null
udevadm settle
mkfs.ext4 -q -L bootfs /dev/vda1
lvm pvcreate -q /dev/vda2
lvm vgcreate -q {VG} /dev/vda2
lvm lvcreate -q -L 24M -n data {VG}
lvm lvcreate -q -L 8M -n swap {VG}
udevadm settle; lvm vgmknodes {VG}
mkswap -L lvswap /dev/{VG}/swap >/dev/null
head -c 20M /dev/urandom > /dev/{VG}/data
sync
"""
#: A thin pool and a thin LV on top: vgcfgrestore needs --force for thin pools (their
#: kernel metadata is not in the VG metadata); the thin LV's blocks are restored as data.
THIN_SETUP = f"""set -e
lvm lvcreate -q --type thin-pool -L 16M -n pool {VG}
lvm lvcreate -q --type thin -V 12M --thinpool pool -n thin {VG}
udevadm settle
head -c 6M /dev/urandom > /dev/{VG}/thin
sync
"""


def quiet(command: str) -> str:
    """`command` with its stderr (log lines) kept out of its JSON, shown if it fails."""
    return f"{command} 2>/tmp/stderr || {{ rc=$?; cat /tmp/stderr; exit $rc; }}"


def identity(vm: VM) -> dict[str, Any]:
    pvs = json.loads(vm.check("lvm pvs --reportformat json -o pv_uuid,vg_name,vg_uuid"))
    lvs = json.loads(vm.check(f"lvm lvs --reportformat json -o lv_name,lv_uuid {VG}"))
    return {
        "pv": [(p["pv_uuid"], p["vg_name"], p["vg_uuid"]) for p in pvs["report"][0]["pv"]],
        "lvs": sorted((lv["lv_name"], lv["lv_uuid"]) for lv in lvs["report"][0]["lv"]
                      if not lv["lv_name"].startswith("cdpsnap")),
        "data": vm.check(f"sha256sum < /dev/{VG}/data").split()[0],
        "thin": vm.check(f"if [ -e /dev/{VG}/thin ]; then sha256sum < /dev/{VG}/thin; fi"),
        "swap": vm.check(f"blkid -o export /dev/{VG}/swap | grep -E '^(UUID|LABEL|TYPE)='"),
        "boot": vm.check("blkid -o export /dev/vda1 | grep -E '^(UUID|LABEL)='"),
    }


def pv_size(vm: VM) -> int:
    pvs = json.loads(vm.check("lvm pvs --reportformat json --units b --nosuffix -o pv_size"))
    return int(pvs["report"][0]["pv"][0]["pv_size"])


def part_size(vm: VM, device: str) -> int:
    return int(vm.check(f"blockdev --getsize64 {device}"))


# The linear case restores proportionally (both partitions grow, the PV's moves), the thin
# one with grow-last (only the PV's partition grows): both grow a PV, by pvresize.
@pytest.mark.parametrize(("thin", "resize"), [(False, "proportional"), (True, "grow-last")],
                         ids=["linear", "thin-pool"])
def test_lvm_restore_preserves_uuids(cdp_server: Any, tmp_path: Path, image: KernelBoot,
                                     thin: bool, resize: str) -> None:
    tokens = cdp_server.add_host(HOST)
    url = f"https://{GUEST_SERVER_IP}:{GUEST_PORT}"
    fwd = Forward(GUEST_PORT, cdp_server.port)
    source, target = tmp_path / "source.img", tmp_path / "target.img"
    with source.open("wb") as f:
        f.truncate(128 * MIB)
    with target.open("wb") as f:
        f.truncate(160 * MIB)

    with VM(VMConfig(disks=[Disk(source)], forwards=[fwd], boot=image,
                     name="rescue-lvm-source")) as vm:
        vm.check(SOURCE_SETUP + (THIN_SETUP if thin else ""), timeout=600)
        vm.check(f"CDP_PASSPHRASE='{PASSPHRASE}' cdp-agent init --server {url} "
                 f"--token {tokens[Role.agent]} --host {HOST} "
                 f"--fingerprint {cdp_server.fingerprint} --source /dev/vda", timeout=600)
        point = json.loads(vm.check(quiet("cdp-agent backup --json"), timeout=1800))
        original = identity(vm)
        old_pv = pv_size(vm)
        old_boot = part_size(vm, "/dev/vda1")
    assert len(original["pv"]) == 1 and len(original["lvs"]) == (4 if thin else 2)

    answers = {"server": url, "token": tokens[Role.restore], "host": HOST,
               "fingerprint": cdp_server.fingerprint, "passphrase": PASSPHRASE,
               "point": "latest", "map": {"vda": "/dev/vda"}, "resize": resize,
               "verify": "read-back"}
    with VM(VMConfig(disks=[Disk(target)], forwards=[fwd], boot=image,
                     name="rescue-lvm-target")) as vm:
        vm.put("/tmp/answers.json", json.dumps(answers).encode(), mode=0o600)
        report = json.loads(vm.check(quiet("rescue restore --answers /tmp/answers.json "
                                           "--yes --json"), timeout=1800))
        assert report["ok"], report["errors"]
        assert report["point_id"] == point["point_id"]
        assert not [n for n in report["notes"] if "vgcfgrestore failed" in n]
        vm.check(f"lvm vgchange -ay {VG} >/dev/null && udevadm settle")
        restored = identity(vm)
        grown_pv = pv_size(vm)
        grown_boot = part_size(vm, "/dev/vda1")
        boot_fs_bytes = int(vm.check("dumpe2fs -h /dev/vda1 2>/dev/null | awk -F: "
                                     "'/^Block count/ {n=$2} /^Block size/ {s=$2} "
                                     "END {print n*s}'"))
        thin_used = vm.check(f"if [ -e /dev/{VG}/thin ]; then lvm lvs --noheadings -o "
                             f"data_percent {VG}/thin; fi").strip()
        vm.check("e2fsck -fn /dev/vda1")
    if resize == "grow-last":
        # The PV's partition got the target's 32 MiB more: pvresize hands them to the VG
        # (less the GPT's backup and alignment), and the report says so.
        assert 31 * MIB < grown_pv - old_pv <= 32 * MIB
        assert grown_boot == old_boot
    else:
        # The 32 MiB are shared by size (16 MiB ext4 and the ~111 MiB PV, in whole MiB):
        # the ext4 partition and its filesystem grow by 4 MiB, the PV's moves 4 MiB on
        # and gives the VG the rest.
        assert grown_boot == old_boot + 4 * MIB == boot_fs_bytes
        assert 27 * MIB < grown_pv - old_pv <= 28 * MIB
    assert any(f"volume group {VG}: physical volume /dev/vda2 grown to " in note
               for note in report["notes"])
    if not thin:
        assert restored == original
        return
    # The thin pool and thin LV are made again (their UUIDs are new, and the report says
    # so); everything else, the thin LV's bytes included, is as it was.
    assert any("thin pools pool and their thin LVs were recreated with lvcreate" in note
               for note in report["notes"])
    # Its 6 MiB of data are provisioned, its zeros are not (writing them would provision
    # the whole 12 MiB, and could fill an overcommitted pool).
    assert 45 <= float(thin_used) <= 60, thin_used
    for key in ("pv", "data", "thin", "swap", "boot"):
        assert restored[key] == original[key], key
    kept = [lv for lv in original["lvs"] if lv[0] in ("data", "swap")]
    assert [lv for lv in restored["lvs"] if lv[0] in ("data", "swap")] == kept
    assert [n for n, _ in restored["lvs"]] == [n for n, _ in original["lvs"]]
