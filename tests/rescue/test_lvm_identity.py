"""A restore that recreates a volume group refuses to start while a disk outside the plan
carries the same VG name or PV UUIDs (the old disk, still attached): LVM would see two
copies. Real LVM labels on loop devices (pvcreate and vgcreate need no device-mapper);
the restore itself, which does, is tested in QEMU (test_vm_lvm.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdpcore import runcmd
from cdpcore.errors import SafetyError
from cdpcore.layout import Disk
from rescue.discover import describe_target
from rescue.engine import recheck_targets
from rescue.plan import Action, DiskPlan, Plan
from tests.loopdev import attached_loop

pytestmark = pytest.mark.skipif(shutil.which("pvcreate") is None, reason="needs lvm2")

MIB = 1024 * 1024
PV_UUID = "Rb3hIc-0Wbc-cdpT-estP-V0uu-id00-000001"


@pytest.fixture
def two_disks(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(target, other): two loop devices of 64 MiB."""
    for name in ("target", "other"):
        (tmp_path / name).write_bytes(bytes(64 * MIB))
    with attached_loop(tmp_path / "target") as target, \
            attached_loop(tmp_path / "other") as other:
        yield target, other
        for dev in (target, other):
            runcmd.run(["wipefs", "--all", dev], check=False)


def plan_for(target: str) -> Plan:
    disk = describe_target(target)
    return Plan(host="web1", point_id="p" * 64, created=0.0, resize="same", verify="blocks",
                disks=[DiskPlan("vda", disk, "--map", Disk(name="vda", size=disk.size))],
                actions=[Action("lvm:testvg", "lvm", target, "recreate volume group testvg",
                                params={"vg": "testvg", "pv_devices": {PV_UUID: target}})],
                volumes=[])


def label(dev: str, vg: str, uuid: str | None = None) -> None:
    runcmd.run(["pvcreate", "-q", "--force", *(["--uuid", uuid, "--norestorefile"]
                                               if uuid else []), dev])
    runcmd.run(["vgcreate", "-q", vg, dev])


@pytest.mark.parametrize("clash", ["vg-name", "pv-uuid"])
def test_a_disk_outside_the_plan_with_the_same_lvm_identity_is_refused(
        two_disks: tuple[str, str], clash: str) -> None:
    target, other = two_disks
    if clash == "vg-name":
        label(other, "testvg")
    else:
        label(other, "othervg", PV_UUID)
    with pytest.raises(SafetyError) as caught:
        recheck_targets(plan_for(target))
    message = str(caught.value)
    assert message.startswith("refusing to recreate volume group testvg: disks outside the "
                              f"plan carry the same VG name or PV UUIDs: {other} (PV ")
    assert ("of VG testvg)" if clash == "vg-name" else f"{PV_UUID} of VG othervg)") in message


def test_the_same_lvm_identity_on_the_target_itself_is_no_obstacle(
        two_disks: tuple[str, str]) -> None:
    target, _ = two_disks
    label(target, "testvg", PV_UUID)  # the disk being restored over: it is wiped first
    recheck_targets(plan_for(target))
