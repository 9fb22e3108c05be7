"""LVM snapshots (thick and thin), dm-era tracking (set up with `cdp-agent era attach`),
LVM layout capture, and the freeze of a mounted partition of a whole-disk source, inside a
QEMU VM booted from the rescue image (this machine's kernel has no device-mapper). The
agent runs in the guest against the real server on this machine; every point is read back
here and compared with the SHA-256 the guest computed of each LV at that moment, and the
partition's filesystem must come back clean with the guest's files."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from cdpcore.api import Role
from cdpcore.crypto import BlobCodec, KeySet
from cdpcore.keys import parse_recovery_key
from hotcopy.verify import iter_volume, open_point, verify_point

pytestmark = pytest.mark.vm

GUEST_PORT = 8443
MiB = 1024 * 1024
LVS = {"data": 48, "tracked": 40, "thin": 24}  # volumes checked byte for byte (MiB)
SETUP = """
set -e
pvcreate -q -y -ff /dev/vda
vgcreate -q vg0 /dev/vda
lvcreate -q -y -L 48M -n data vg0
lvcreate -q -y -L 40M -n tracked vg0
lvcreate -q -y -L 8M -n erameta vg0
lvcreate -q -y -L 32M -T vg0/pool
lvcreate -q -y -V 24M -T vg0/pool -n thin
mkfs.ext4 -q -U 5e1f7c2a-3b4d-4e6f-8a9b-0c1d2e3f4a5b -L datafs /dev/vg0/data
dd if=/dev/urandom of=/dev/vg0/tracked bs=1M count=40 status=none
dd if=/dev/urandom of=/dev/vg0/thin bs=1M count=8 status=none
cdp-agent era attach /dev/vg0/tracked --metadata /dev/vg0/erameta
# A filesystem mounted on an era device over an LV: lvcreate's own freeze cannot reach it.
lvcreate -q -y -L 24M -n mounted vg0
lvcreate -q -y -L 4M -n mountedmeta vg0
cdp-agent era attach /dev/vg0/mounted --metadata /dev/vg0/mountedmeta
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 -L erafs /dev/mapper/cdpera-mounted
mkdir -p /mnt/era
mount /dev/mapper/cdpera-mounted /mnt/era
echo first > /mnt/era/era0.bin
sgdisk -n1:1MiB:0 /dev/vdb >/dev/null
partprobe /dev/vdb; udevadm settle
# No lazy initialisation: nothing may write to the mounted filesystem behind the test's back.
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 -L partfs /dev/vdb1
mkdir -p /mnt/part
mount /dev/vdb1 /mnt/part
echo first > /mnt/part/step0.bin
"""
#: The owner tag of another agent's snapshots (hotcopy.snapshot.lvm.owner_tag).
FOREIGN_TAG = "cdp_agent_0123456789abcdef"
#: The mounted filesystem on the whole-disk source /dev/vdb, written by the workload.
PART_FILES = "/mnt/part"
#: The filesystem mounted on the era device over vg0/mounted, written by the workload.
ERA_FILES = "/mnt/era"


def _workload(step: int) -> str:
    """Scattered 4 KiB writes (the era volume through its era device) and a sequential run."""
    cmds = [f"dd if=/dev/urandom of=/dev/mapper/cdpera-tracked bs=4k seek={(step * 97 + i * 613) % 10000} "
            "count=1 conv=notrunc oflag=direct status=none" for i in range(6)]
    cmds += [f"dd if=/dev/urandom of=/dev/vg0/data bs=4k seek={4096 + step * 37 + i * 211} "
             "count=1 conv=notrunc oflag=direct status=none" for i in range(4)]
    cmds.append(f"dd if=/dev/urandom of=/dev/vg0/thin bs=64k seek={200 + step * 8} count=8 "
                "conv=notrunc oflag=direct status=none")
    cmds.append(f"head -c {128 * step}K /dev/urandom > {PART_FILES}/step{step}.bin")
    cmds.append(f"head -c {64 * step}K /dev/urandom > {ERA_FILES}/era{step}.bin")
    return "set -e\n" + "\n".join(cmds) + "\nsync\n"


def _hashes(vm) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """SHA-256 of each LV (by name) and of each file on the partition (by file name)."""
    # The era-tracked LV is written through its era device, so the LV's own page cache is
    # stale: drop it before reading.
    devs = " ".join(f"/dev/vg0/{lv}" for lv in LVS)
    out = vm.check(f"sync; blockdev --flushbufs {devs}; echo 3 > /proc/sys/vm/drop_caches; "
                   f"sha256sum {devs} {PART_FILES}/*.bin {ERA_FILES}/*.bin")
    return {line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in out.splitlines()}


def _frozen(vm, mountpoint: str) -> bool:  # type: ignore[no-untyped-def]
    # A second freeze of a frozen filesystem fails (EBUSY); writing to it would hang.
    code, _ = vm.run(f"fsfreeze --freeze {mountpoint} && fsfreeze --unfreeze {mountpoint}")
    return code != 0


def _partition_files(image: Path) -> dict[str, str]:
    """The filesystem of a restored volume must be clean: frozen when read (or when its
    snapshot was made), its journal holds nothing to recover. Returns the SHA-256 of its
    files."""
    header = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                            check=True).stdout
    assert "needs_recovery" not in header, header
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True,
                          check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    names = subprocess.run(["debugfs", "-R", "ls -p /", str(image)], capture_output=True,
                           text=True, check=True).stdout
    out = {}
    for line in names.splitlines():
        name = line.strip("/").split("/")[4] if line.count("/") >= 5 else ""
        if name.endswith(".bin"):
            data = subprocess.run(["debugfs", "-R", f"cat /{name}", str(image)],
                                  capture_output=True, check=True).stdout
            out[name] = hashlib.sha256(data).hexdigest()
    return out


def test_lvm_points_with_era_tracking_are_byte_for_byte(cdp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mkimage.qemu import GUEST_SERVER_IP, VM, Disk, Forward, VMConfig

    host = "vmhost"
    token = cdp_server.add_host(host)[Role.agent]
    remote = cdp_server.client(token)
    disk, part_disk = tmp_path / "vda.img", tmp_path / "vdb.img"
    for path, size in ((disk, 256 * MiB), (part_disk, 48 * MiB)):
        with open(path, "wb") as f:
            f.truncate(size)
    cfg = VMConfig(disks=[Disk(disk), Disk(part_disk)], memory_mib=2048,
                   forwards=[Forward(guest_port=GUEST_PORT, host_port=cdp_server.port)])
    with VM(cfg) as vm:
        vm.check(SETUP, timeout=300)
        eras = json.loads(vm.check("cdp-agent era status --json"))
        assert sorted((e["name"], e["block_bytes"]) for e in eras) == [
            ("cdpera-mounted", 65536), ("cdpera-tracked", 65536)]
        # Attaching again keeps the device (a restarted boot unit must not fail).
        assert vm.check("cdp-agent era attach /dev/vg0/tracked --metadata /dev/vg0/erameta"
                        ).strip() == "/dev/mapper/cdpera-tracked"
        init = vm.check(
            f"cdp-agent init --server https://{GUEST_SERVER_IP}:{GUEST_PORT} --token {token} "
            f"--host {host} --passphrase pw --fingerprint {cdp_server.fingerprint} "
            "--source /dev/vda --source /dev/vdb --state-dir /root/state "
            "--config /root/agent.toml "
            "--print-recovery-key", timeout=600)
        recovery = init.split("recovery key: ", 1)[1].split()[0]
        codec = BlobCodec(KeySet.from_master(parse_recovery_key(recovery)))
        points: list[tuple[dict[str, str], dict[str, object]]] = []
        for step in range(3):
            if step:
                vm.check(_workload(step), timeout=300)
            hashes = _hashes(vm)
            out = vm.check("cdp-agent backup --config /root/agent.toml --tracking era --json "
                           "2>>/root/agent.log", timeout=900)
            points.append((hashes, json.loads(out)))
        assert "cdpsnap_" not in vm.check("lvs -a --noheadings -o lv_name vg0")
        log = vm.check("cat /root/agent.log")
        assert "froze /mnt/part to read /dev/vdb" in log
        assert "froze /mnt/era to snapshot /dev/vg0/mounted" in log
        assert re.search(r"thawed /mnt/part after \d+\.\d\d s", log)
        assert not _frozen(vm, "/mnt/part")
        # A killed agent leaves nothing frozen: its guard thaws at once, and `thaw` clears
        # the marker it left.
        vm.check("cdp-agent backup --config /root/agent.toml 2>/root/killed.log & "
                 "until grep -q 'froze /mnt/part' /root/killed.log; do sleep 0.2; done; kill -9 $!",
                 timeout=600)
        vm.check("for i in $(seq 50); do fsfreeze -f /mnt/part 2>/dev/null && "
                 "fsfreeze -u /mnt/part && exit 0; sleep 0.2; done; exit 1")
        assert vm.check("cat /root/state/vmhost/frozen").split() == ["/mnt/part"]
        vm.check("cdp-agent thaw --config /root/agent.toml; test ! -e /root/state/vmhost/frozen")
        # Snapshots left on the machine: another agent's (tagged with its owner tag), and
        # an untagged one as an agent from before the tags named its snapshot of vg0/thin.
        # The next point removes only the latter (and whatever the killed run left), and
        # neither is a volume or an LV of its layout.
        vm.check(f"lvcreate -q -y -s -kn --addtag {FOREIGN_TAG} -n cdpsnap_foreign vg0/thin "
                 "&& lvcreate -q -y -s -kn -n cdpsnap_thin vg0/thin")
        after = json.loads(vm.check("cdp-agent backup --config /root/agent.toml --tracking era "
                                    "--json 2>>/root/agent.log", timeout=900))
        assert vm.check("lvs --noheadings -o lv_name,lv_tags vg0 | grep cdpsnap_").split() == [
            "cdpsnap_foreign", FOREIGN_TAG]
        assert "removing leftover snapshot vg0/cdpsnap_thin" in vm.check("cat /root/agent.log")
        vm.check("cdp-agent era detach tracked && test ! -e /dev/mapper/cdpera-tracked")
        vg_uuid = vm.check("vgs --noheadings -o vg_uuid vg0").strip()
        pv_uuid = vm.check("pvs --noheadings -o pv_uuid /dev/vda").strip()
        lv_uuids = dict(line.split() for line in vm.check(
            "lvs --noheadings -o lv_name,lv_uuid vg0").splitlines())

    for n, (hashes, info) in enumerate(points):
        point_id = str(info["point_id"])
        manifest = open_point(remote, host, codec, point_id)
        by_name = {v.name: v for v in manifest.volumes}
        for lv, size in LVS.items():
            vol = by_name[f"lvm:vg0/{lv}"]
            assert vol.size == size * MiB
            digest = hashlib.sha256()
            for block in iter_volume(remote, host, codec, vol):
                digest.update(block)
            assert digest.hexdigest() == hashes[lv], f"{lv} differs in point {n}"
        for volume, prefix in (("vdb:p1", "step"), ("lvm:vg0/mounted", "era")):
            image = tmp_path / f"{prefix}{n}.img"
            with image.open("wb") as f:
                for block in iter_volume(remote, host, codec, by_name[volume]):
                    f.write(block)
            assert _partition_files(image) == {k: v for k, v in hashes.items()
                                               if k.startswith(prefix)}, f"{volume}, point {n}"
        assert manifest.tracking["mode"] == "era"
        assert manifest.tracking["full_scan"] is (n == 0)
        assert verify_point(remote, host, codec, point_id).ok
    last = open_point(remote, host, codec, str(after["point_id"]))
    assert not [v.name for v in last.volumes if "cdpsnap" in v.name]
    assert not [lv.name for lv in last.layout.volume_groups[0].lvs if "cdpsnap" in lv.name]
    # With era tracking, the tracked LV's unchanged blocks are not even read.
    stats = points[2][1]["stats"]
    assert isinstance(stats, dict)
    total = sum(v.size for v in manifest.volumes)
    assert stats["scanned_bytes"] <= total - 39 * MiB

    vg = manifest.layout.volume_groups[0]
    assert (vg.name, vg.uuid) == ("vg0", vg_uuid)
    assert [(pv.uuid, pv.device) for pv in vg.pvs] == [(pv_uuid, "vda")]
    assert {lv.name: lv.uuid for lv in vg.lvs} == {k: v for k, v in lv_uuids.items()
                                                   if not k.startswith(("[", "cdpsnap_"))}
    assert f'id = "{vg_uuid}"' in vg.metadata and "tracked {" in vg.metadata
    data = next(lv for lv in vg.lvs if lv.name == "data")
    assert data.filesystem is not None and (data.filesystem.uuid, data.filesystem.label) == (
        "5e1f7c2a-3b4d-4e6f-8a9b-0c1d2e3f4a5b", "datafs")
    pool = next(lv for lv in vg.lvs if lv.name == "pool")
    assert (pool.segtype, pool.volume) == ("thin-pool", None)
    assert manifest.layout.disk("vda").volume is None  # a whole-disk PV: its LVs are copied
