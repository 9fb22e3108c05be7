"""LVM snapshots (thick and thin), dm-era tracking and LVM layout capture, inside a QEMU VM
booted from the rescue image (this machine's kernel has no device-mapper). The agent runs
in the guest against the real server on this machine; every point is read back here and
compared with the SHA-256 the guest computed of each LV at that moment."""

from __future__ import annotations

import hashlib
import json
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
dmsetup create cdpera-tracked --table "0 $(blockdev --getsz /dev/vg0/tracked) era /dev/vg0/erameta /dev/vg0/tracked 128"
"""


def _workload(step: int) -> str:
    """Scattered 4 KiB writes (the era volume through its era device) and a sequential run."""
    cmds = [f"dd if=/dev/urandom of=/dev/mapper/cdpera-tracked bs=4k seek={(step * 97 + i * 613) % 10000} "
            "count=1 conv=notrunc oflag=direct status=none" for i in range(6)]
    cmds += [f"dd if=/dev/urandom of=/dev/vg0/data bs=4k seek={4096 + step * 37 + i * 211} "
             "count=1 conv=notrunc oflag=direct status=none" for i in range(4)]
    cmds.append(f"dd if=/dev/urandom of=/dev/vg0/thin bs=64k seek={200 + step * 8} count=8 "
                "conv=notrunc oflag=direct status=none")
    return "set -e\n" + "\n".join(cmds) + "\nsync\n"


def _hashes(vm) -> dict[str, str]:  # type: ignore[no-untyped-def]
    # The era-tracked LV is written through its era device, so the LV's own page cache is
    # stale: drop it before reading.
    devs = " ".join(f"/dev/vg0/{lv}" for lv in LVS)
    out = vm.check(f"sync; blockdev --flushbufs {devs}; echo 3 > /proc/sys/vm/drop_caches; "
                   f"sha256sum {devs}")
    return {line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in out.splitlines()}


def test_lvm_points_with_era_tracking_are_byte_for_byte(cdp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mkimage.qemu import GUEST_SERVER_IP, VM, Disk, Forward, VMConfig

    host = "vmhost"
    token = cdp_server.add_host(host)[Role.agent]
    remote = cdp_server.client(token)
    disk = tmp_path / "vda.img"
    with open(disk, "wb") as f:
        f.truncate(256 * MiB)
    cfg = VMConfig(disks=[Disk(disk)], memory_mib=2048,
                   forwards=[Forward(guest_port=GUEST_PORT, host_port=cdp_server.port)])
    with VM(cfg) as vm:
        vm.check(SETUP, timeout=300)
        init = vm.check(
            f"cdp-agent init --server https://{GUEST_SERVER_IP}:{GUEST_PORT} --token {token} "
            f"--host {host} --passphrase pw --fingerprint {cdp_server.fingerprint} "
            "--source /dev/vda --state-dir /root/state --config /root/agent.toml "
            "--print-recovery-key", timeout=600)
        recovery = init.split("recovery key: ", 1)[1].split()[0]
        codec = BlobCodec(KeySet.from_master(parse_recovery_key(recovery)))
        points: list[tuple[dict[str, str], dict[str, object]]] = []
        for step in range(3):
            if step:
                vm.check(_workload(step), timeout=300)
            hashes = _hashes(vm)
            out = vm.check("cdp-agent backup --config /root/agent.toml --tracking era --json",
                           timeout=900)
            points.append((hashes, json.loads(out[out.index("{"):])))
        assert "cdpsnap_" not in vm.check("lvs -a --noheadings -o lv_name vg0")
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
        assert manifest.tracking["mode"] == "era"
        assert manifest.tracking["full_scan"] is (n == 0)
        assert verify_point(remote, host, codec, point_id).ok
    # With era tracking, the tracked LV's unchanged blocks are not even read.
    stats = points[2][1]["stats"]
    assert isinstance(stats, dict)
    total = sum(v.size for v in manifest.volumes)
    assert stats["scanned_bytes"] <= total - 39 * MiB

    vg = manifest.layout.volume_groups[0]
    assert (vg.name, vg.uuid) == ("vg0", vg_uuid)
    assert [(pv.uuid, pv.device) for pv in vg.pvs] == [(pv_uuid, "vda")]
    assert {lv.name: lv.uuid for lv in vg.lvs} == {k: v for k, v in lv_uuids.items()
                                                   if not k.startswith("[")}
    assert f'id = "{vg_uuid}"' in vg.metadata and "tracked {" in vg.metadata
    data = next(lv for lv in vg.lvs if lv.name == "data")
    assert data.filesystem is not None and (data.filesystem.uuid, data.filesystem.label) == (
        "5e1f7c2a-3b4d-4e6f-8a9b-0c1d2e3f4a5b", "datafs")
    pool = next(lv for lv in vg.lvs if lv.name == "pool")
    assert (pool.segtype, pool.volume) == ("thin-pool", None)
    assert manifest.layout.disk("vda").volume is None  # a whole-disk PV: its LVs are copied
