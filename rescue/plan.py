"""The restore plan: an ordered, reviewable, serialisable list of actions (pure).

Built from a point's layout and volume records plus descriptions of the target disks; it
touches nothing. Every destructive step is an Action naming its target path and byte
range, so a plan can be printed, saved as JSON, reviewed and executed later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from cdpcore.errors import FormatError, SafetyError, UsageError
from cdpcore.layout import FILE_SECTOR, Disk, Filesystem, Layout, Partition, _disk
from cdpcore.manifest import VolumeRecord
from cdpcore.units import human

from .bootloader import ROOT_FILESYSTEMS
from .discover import LocalDisk
from .growfs import GROWABLE
from .mapping import Match
from .resize import ResizePolicy, fit
from .tables import rewritten_by_table

#: Version 2: the boot loader action lists every restored device ("devices"), where
#: /boot and /boot/efi are looked for. Version 3: each target disk's "hardware" (where it
#: is attached), checked again before writing.
PLAN_VERSION = 3
ActionType = Literal["wipe", "stream", "partition_table", "swap", "lvm", "verify", "grow_fs",
                     "bootloader"]
VerifyMode = Literal["blocks", "read-back"]


@dataclass
class Action:
    id: str
    type: ActionType
    target: str  # device or image file written
    description: str
    volume: str | None = None
    offset: int = 0  # bytes on the target
    size: int = 0  # bytes of the target region this action writes or checks
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DiskPlan:
    source: str
    target: LocalDisk
    reason: str  # why this target: "--map", "same SERIAL S1", ...
    layout: Disk  # the layout as written on the target (resized partitions)


@dataclass
class Plan:
    host: str
    point_id: str
    created: float
    resize: ResizePolicy
    verify: VerifyMode
    disks: list[DiskPlan]
    actions: list[Action]
    volumes: list[VolumeRecord]
    notes: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def verify_only(self) -> bool:
        """A plan of read-back checks alone (`rescue verify`): it writes nothing."""
        return bool(self.actions) and all(a.type == "verify" for a in self.actions)

    def files_stem(self) -> str:
        """The name its state and report files start with; a check's differ from a
        restore's, whose report and resume state it must not replace."""
        return (f"rescue-{self.host}-{self.point_id[:12]}"
                + (".verify" if self.verify_only else ""))

    def fingerprint(self) -> str:
        """Identity of what this plan writes where: a resume state is only reused for the
        same fingerprint."""
        doc = {"point": self.point_id, "actions": [asdict(a) for a in self.actions],
               "targets": [(d.target.path, d.target.size, d.target.serial) for d in self.disks]}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]

    @classmethod
    def from_json(cls, doc: Any) -> Plan:
        if not isinstance(doc, dict):
            raise FormatError("malformed plan file: not a plan saved by `rescue plan --save` "
                              "(a JSON object)")
        try:
            if doc["version"] != PLAN_VERSION:
                raise FormatError(f"plan version {doc['version']} is not supported (this "
                                  f"rescue reads version {PLAN_VERSION}): make the plan again")
            return cls(
                host=doc["host"], point_id=doc["point_id"], created=float(doc["created"]),
                resize=doc["resize"], verify=doc["verify"], notes=list(doc["notes"]),
                disks=[DiskPlan(source=d["source"], target=LocalDisk.from_json(d["target"]),
                                reason=d["reason"], layout=_disk(d["layout"]))
                       for d in doc["disks"]],
                actions=[Action(**a) for a in doc["actions"]],
                volumes=[VolumeRecord.from_json(v) for v in doc["volumes"]])
        except KeyError as exc:  # KeyError('version') said nothing to a sysadmin
            raise FormatError(f"malformed plan file: no {exc.args[0]!r} field (save the plan "
                              "again with `rescue plan --save`)") from None
        except (TypeError, ValueError) as exc:
            raise FormatError(f"malformed plan file: {exc}") from None


def partition_device(disk_path: str, number: int) -> str:
    """Kernel node of partition `number` of a disk (/dev/sda -> /dev/sda2, nvme0n1 -> p2)."""
    return f"{disk_path}{'p' if disk_path[-1].isdigit() else ''}{number}"


def _check_target(src: Disk, match: Match) -> None:
    target = match.target
    if target.busy:
        raise SafetyError(f"refusing target {target.path} for source disk {src.name}: "
                          + "; ".join(target.busy))
    if target.read_only:
        raise SafetyError(f"refusing target {target.path}: it is read-only")
    if target.is_file:
        if src.table and src.logical_sector_size != FILE_SECTOR:
            # libparted would write the table in 512-byte sectors, the data would go where
            # the source's sectors put it: a table that does not match its partitions.
            raise SafetyError(
                f"target {target.path} is an image file, which partition tools read as "
                f"{FILE_SECTOR}-byte sectors; source disk {src.name} had "
                f"{src.logical_sector_size}-byte sectors: restore onto a disk of that sector "
                "size, or attach the file as one (losetup --sector-size "
                f"{src.logical_sector_size}) and restore onto the loop device")
    elif target.logical_sector_size != src.logical_sector_size:
        why = "partition tables cannot be carried over" if src.table else \
            "a filesystem made on one sector size may not mount on the other"
        raise SafetyError(f"target {target.path} has {target.logical_sector_size}-byte sectors,"
                          f" source disk {src.name} had {src.logical_sector_size}: {why}")


def _disk_actions(src: Disk, dp: DiskPlan, vols: dict[str, VolumeRecord]) -> list[Action]:
    path, sector = dp.target.path, src.logical_sector_size
    acts = [Action(f"wipe:{src.name}", "wipe", path,
                   f"wipe {path} ({human(dp.target.size)}): old signatures at both ends"
                   + (", whole file emptied" if dp.target.is_file
                      else " and at both ends of each partition of its old table"),
                   size=dp.target.size)]
    if src.boot_area_volume:
        vol = vols[src.boot_area_volume]
        acts.append(Action(f"stream:{vol.name}", "stream", path,
                           f"write boot area {vol.name} ({human(vol.size)}) at 0",
                           volume=vol.name, size=vol.size))
    if src.table:
        acts.append(Action(f"table:{src.name}", "partition_table", path,
                           f"create {src.table} partition table on {path} with "
                           f"{len(dp.layout.partitions)} partitions (GUIDs as captured)",
                           size=dp.target.size))
    for part in dp.layout.partitions:
        acts.extend(_partition_actions(src, part, path, sector, vols))
    if src.volume:
        vol = vols[src.volume]
        acts.append(Action(f"stream:{vol.name}", "stream", path,
                           f"write {vol.name} ({human(vol.size)}) at 0", volume=vol.name,
                           size=vol.size))
    return acts


def _partition_actions(src: Disk, part: Partition, path: str, sector: int,
                       vols: dict[str, VolumeRecord]) -> list[Action]:
    offset = part.start * sector
    if part.volume:
        vol = vols[part.volume]
        return [Action(f"stream:{vol.name}", "stream", path,
                       f"write {vol.name} ({human(vol.size)}) at byte {offset} of {path}",
                       volume=vol.name, offset=offset, size=vol.size)]
    if part.role == "swap":
        fs = part.filesystem
        return [Action(f"swap:{src.name}:p{part.number}", "swap", path,
                       f"make swap on partition {part.number} at byte {offset} "
                       f"(UUID {fs.uuid if fs else 'new'})", offset=offset,
                       size=part.length * sector,
                       params={"uuid": fs.uuid if fs else None,
                               "label": fs.label if fs else None})]
    return []


def _pv_location(layout: Layout, device: str) -> tuple[str | None, int]:
    """(source disk name, partition number or 0 for the whole disk) of a PV device name.
    Partitions are named as the kernel names them (partition_device): nvme0n11 is the
    disk of namespace 11, never partition 1 of nvme0n1."""
    for disk in layout.disks:
        if device == disk.name:
            return disk.name, 0
    for disk in layout.disks:
        for part in disk.partitions:
            if device == partition_device(disk.name, part.number):
                return disk.name, part.number
    return None, 0


def _lvm_actions(layout: Layout, plans: dict[str, DiskPlan],
                 vols: dict[str, VolumeRecord]) -> list[Action]:
    acts: list[Action] = []
    for vg in layout.volume_groups:
        devices: dict[str, str] = {}
        for pv in vg.pvs:
            owner, number = _pv_location(layout, pv.device)
            if owner is None or owner not in plans:
                raise UsageError(f"volume group {vg.name}: its PV {pv.device} is on no disk "
                                 "of the plan")
            target = plans[owner].target
            if target.is_file:
                raise UsageError(f"volume group {vg.name} needs block-device targets (LVM "
                                 f"cannot use a partition inside image file {target.path})")
            devices[pv.uuid] = (partition_device(target.path, number) if number
                                else target.path)
        acts.append(Action(f"lvm:{vg.name}", "lvm", ",".join(devices.values()),
                           f"recreate volume group {vg.name} (UUID {vg.uuid}) on "
                           + ", ".join(devices.values()) + " with the original UUIDs",
                           params={"vg": vg.name, "pv_devices": devices}))
        for lv in vg.lvs:
            if lv.volume:
                vol = vols[lv.volume]
                # A thin LV is made afresh: its zero blocks are left unprovisioned.
                acts.append(Action(f"stream:{vol.name}", "stream", f"/dev/{vg.name}/{lv.name}",
                                   f"write {vol.name} ({human(vol.size)}) to "
                                   f"/dev/{vg.name}/{lv.name}", volume=vol.name,
                                   size=vol.size,
                                   params={"unprovisioned": True} if lv.segtype == "thin"
                                   else {}))
            elif lv.filesystem and lv.filesystem.type == "swap":
                acts.append(Action(f"swap:{lv.volume or vg.name + '/' + lv.name}", "swap",
                                   f"/dev/{vg.name}/{lv.name}",
                                   f"make swap on /dev/{vg.name}/{lv.name}", size=lv.size,
                                   params={"uuid": lv.filesystem.uuid,
                                           "label": lv.filesystem.label}))
    return acts


#: Whole-disk signatures that are no filesystem to grow: a PV (the LVM step grows it), swap.
NOT_GROWN = ("LVM2_member", "swap")


def _grow_actions(layout: Layout, disks: list[DiskPlan], resize: ResizePolicy
                  ) -> tuple[list[Action], list[str]]:
    """Grow the filesystem of every restored partition that the resize enlarged, and of a
    whole disk (no partition table) restored onto a larger one unless the policy is `same`
    (a PV there is grown by the LVM step, whatever the policy)."""
    acts: list[Action] = []
    notes: list[str] = []

    def grow(dp: DiskPlan, what: str, volume: str, fs: Filesystem, offset: int,
             size: int) -> None:
        if fs.type not in GROWABLE:
            notes.append(f"{dp.target.path} {what}: {fs.type} filesystem not grown (only "
                         + ", ".join(GROWABLE) + " are): grow it after booting")
            return
        acts.append(Action(f"grow_fs:{volume}", "grow_fs", dp.target.path,
                           f"grow the {fs.type} filesystem of {what} to {human(size)}",
                           volume=volume, offset=offset, size=size,
                           params={"fstype": fs.type}))

    for dp in disks:
        src = layout.disk(dp.source)
        sector = src.logical_sector_size
        whole = dp.layout
        if (whole.volume and whole.filesystem and whole.filesystem.type not in NOT_GROWN
                and resize != "same" and whole.size > src.size):
            grow(dp, "(the whole disk)", whole.volume, whole.filesystem, 0, whole.size)
        for part in dp.layout.partitions:
            old = src.partition(part.number)
            fs = part.filesystem
            if part.length <= old.length or not part.volume or fs is None:
                continue
            grow(dp, f"partition {part.number}", part.volume, fs, part.start * sector,
                 part.length * sector)
    return acts, notes


def _bootloader_action(layout: Layout, disks: list[DiskPlan]) -> Action:
    """Last step: GRUB again from inside the restored system, onto the boot disk (the one
    whose boot area is restored, else the first)."""
    files = [dp.target.path for dp in disks if dp.target.is_file]
    if files:
        raise UsageError("--reinstall-bootloader needs block-device targets (it mounts "
                         "partitions and LVs by their device nodes): " + ", ".join(files)
                         + " is an image file")
    boot = next((dp for dp in disks if layout.disk(dp.source).boot_area_volume), disks[0])
    restored = [(partition_device(dp.target.path, p.number), p.filesystem) for dp in disks
                for p in dp.layout.partitions if p.volume]
    restored += [(f"/dev/{vg.name}/{lv.name}", lv.filesystem) for vg in layout.volume_groups
                 for lv in vg.lvs if lv.volume]
    candidates = [dev for dev, fs in restored if fs and fs.type in ROOT_FILESYSTEMS]
    return Action(f"bootloader:{boot.source}", "bootloader", boot.target.path,
                  f"reinstall GRUB ({layout.boot_mode}) on {boot.target.path} from the "
                  "restored system, regenerate its GRUB config and initramfs",
                  params={"boot_mode": layout.boot_mode, "candidates": candidates,
                          "devices": [dev for dev, _ in restored]})


def build_plan(host: str, point_id: str, created: float, layout: Layout,
               volumes: list[VolumeRecord], matches: list[Match], *,
               resize: ResizePolicy = "same", verify: VerifyMode = "blocks",
               grow_fs: bool = True, reinstall_bootloader: bool = False) -> Plan:
    vols = {v.name: v for v in volumes}
    disks: list[DiskPlan] = []
    for match in matches:
        src = layout.disk(match.source)
        _check_target(src, match)
        disks.append(DiskPlan(match.source, match.target, match.reason,
                              fit(src, match.target.size, resize, match.target.path)))
    plans = {d.source: d for d in disks}
    actions: list[Action] = []
    for dp in disks:
        actions.extend(_disk_actions(layout.disk(dp.source), dp, vols))
    actions.extend(_lvm_actions(layout, plans, vols))
    missing = sorted(set(vols) - {a.volume for a in actions if a.volume})
    if missing:
        raise UsageError("the plan does not restore volumes " + ", ".join(missing)
                         + ": map every source disk that holds them")
    if verify == "read-back":
        boot = {d.boot_area_volume: d for d in layout.disks if d.boot_area_volume}
        actions.extend(Action(f"verify:{a.volume}", "verify", a.target,
                              f"read back {a.volume} and check every block", volume=a.volume,
                              offset=a.offset, size=a.size,
                              params={"ignore": rewritten_by_table(boot[a.volume])}
                              if a.volume in boot else {})
                       for a in list(actions) if a.type == "stream")
    # After the read-back checks: growing rewrites the superblocks they compare.
    grown, notes = _grow_actions(layout, disks, resize) if grow_fs else ([], [])
    actions.extend(grown)
    if reinstall_bootloader:
        actions.append(_bootloader_action(layout, disks))
    notes += [f"{dp.target.path}: partitions resized ({resize})" for dp in disks
              if [(p.start, p.length) for p in dp.layout.partitions]
              != [(p.start, p.length) for p in layout.disk(dp.source).partitions]]
    return Plan(host=host, point_id=point_id, created=created, resize=resize, verify=verify,
                disks=disks, actions=actions, volumes=volumes, notes=notes)
