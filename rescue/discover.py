"""Discover local disks and describe restore targets (block devices or image files):
identity (size, serial, WWN, model, transport) and why a disk must not be touched
(mounted, in use as swap or by a holder, holding the rescue medium: mounted, named by
root=/cdp.medium=, or carrying the rescue image's ISO 9660 label)."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cdpcore import runcmd
from cdpcore.errors import UsageError

from .bootopts import kernel_words

#: Kernel device names that are never restore targets by discovery (RAM disks, CD-ROMs,
#: zram swap, device-mapper and MD nodes: these are rebuilt, not targeted).
_SKIP_PREFIXES = ("ram", "zram", "sr", "fd", "dm-", "md")
#: ISO 9660 volume label of the rescue image (mkimage gives it to the hybrid ISO): a disk
#: carrying it is the stick or CD the rescue system booted from.
MEDIUM_LABEL = "CDP_RESCUE"


@dataclass
class LocalDisk:
    path: str  # /dev/sda, or an image file's absolute path
    name: str
    size: int
    is_file: bool = False
    logical_sector_size: int = 512
    model: str | None = None
    serial: str | None = None
    wwn: str | None = None
    transport: str | None = None
    read_only: bool = False
    #: Where it is attached: its sysfs device path (controller and port, what udev's
    #: /dev/disk/by-path is made from); None for loop devices and files. It stays with
    #: the port when kernel names do not: two disks without serial or WWN that swap
    #: names between a plan and its execution are told apart by it.
    hardware: str | None = None
    #: What is on it now (partition table type, filesystems), for the operator's review.
    contents: list[str] = field(default_factory=list)
    #: Reasons the disk is off limits (mounted, swap, holder, rescue medium); empty if free.
    busy: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LocalDisk:
        return cls(**doc)


def _proc_lines(path: str) -> list[list[str]]:
    try:
        return [line.split() for line in Path(path).read_text().splitlines()]
    except OSError:
        return []


def _mounted_devices() -> dict[str, str]:
    """Real paths of mounted block devices -> mount point (and active swap areas)."""
    out: dict[str, str] = {}
    for fields in _proc_lines("/proc/mounts"):
        if len(fields) >= 2 and fields[0].startswith("/dev/"):
            out[os.path.realpath(fields[0])] = fields[1].replace("\\040", " ")
    for fields in _proc_lines("/proc/swaps")[1:]:
        if fields and fields[0].startswith("/dev/"):
            out[os.path.realpath(fields[0])] = "[swap]"
    return out


def rescue_medium_names() -> set[str]:
    """Kernel names of disks that hold the rescue medium: the device mounted on the live
    medium's mount points, or named by root=/cdp.medium= on the kernel command line."""
    names: set[str] = set()
    medium_mounts = ("/", "/run/live/medium", "/run/initramfs/live", "/cdrom", "/media/rescue")
    for fields in _proc_lines("/proc/mounts"):
        if len(fields) >= 2 and fields[1] in medium_mounts and fields[0].startswith("/dev/"):
            names.add(whole_disk(Path(os.path.realpath(fields[0])).name))
    for fields in _proc_lines("/proc/cmdline"):
        # Split as the kernel (and rescue.bootopts) does: /proc/cmdline keeps the quotes
        # the kernel removes, and a quoted cdp.medium="/dev/sdb" must protect /dev/sdb.
        for arg in kernel_words(" ".join(fields)):
            key, _, value = arg.partition("=")
            if key in ("root", "cdp.medium") and value.startswith("/dev/"):
                names.add(whole_disk(Path(os.path.realpath(value)).name))
    return names


def whole_disk(name: str) -> str:
    """The disk a partition belongs to (sda1 -> sda, nvme0n1p2 -> nvme0n1)."""
    sys_path = Path("/sys/class/block") / name
    if (sys_path / "partition").exists():
        return Path(os.path.realpath(sys_path)).parent.name
    return name


#: What a path is, whatever it is called: ("block", device number, 0) for a block device,
#: ("file", filesystem, inode) for anything else.
_Identity = tuple[str, int, int]


def _identity(path: str) -> _Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # a deleted backing file ("... (deleted)"), a vanished node
    if stat.S_ISBLK(st.st_mode):
        return ("block", st.st_rdev, 0)
    return ("file", st.st_dev, st.st_ino)


def _block_identity(name: str) -> _Identity | None:
    """The identity of kernel block device `name` from sysfs: a partition of a loop
    device may have no node in /dev."""
    try:
        major, minor = (Path("/sys/class/block") / name / "dev").read_text().split(":")
    except (OSError, ValueError):
        return None
    return ("block", os.makedev(int(major), int(minor)), 0)


def _loop_backing(name: str) -> str | None:
    """The backing file (or device) of loop device `name` as losetup was given it."""
    try:
        return (Path("/sys/block") / name / "loop" / "backing_file").read_text().strip() \
            or None
    except OSError:
        return None


def _loops_over(ident: _Identity | None, exclude: str = "") -> list[str]:
    """Loop devices (but `exclude`) whose backing file or device is `ident`: they read
    and write it whatever path it was attached by (a hard link, a bind mount, a
    /dev/disk/by-id name); writing it under them would corrupt them or what is on them."""
    if ident is None:
        return []
    found = []
    for entry in sorted(Path("/sys/block").glob("loop*/loop/backing_file")):
        name = entry.parent.parent.name
        backing = _loop_backing(name)
        if name != exclude and backing is not None and _identity(backing) == ident:
            found.append("/dev/" + name)
    return found


def _attached_loops(path: str) -> list[str]:
    """Loop devices whose backing file is `path` (writing it would corrupt them)."""
    return _loops_over(_identity(path))


def _sys_partitions(name: str) -> list[str]:
    try:
        return sorted(p.name for p in (Path("/sys/block") / name).iterdir()
                      if (p / "partition").exists())
    except OSError:
        return []


def _backing_reasons(name: str, medium: set[str], seen: frozenset[str]) -> list[str]:
    """Why loop device `name` is not free because of what it is attached to: another loop
    device over the same file (one disk under two names), or a backing disk (or a
    partition of one) that is itself busy: writing the loop device writes it."""
    backing = _loop_backing(name)
    ident = _identity(backing) if backing is not None else None
    if backing is None or ident is None:
        return []
    if ident[0] == "file":
        others = _loops_over(ident, exclude=name)
        return [f"/dev/{name}: its backing file {backing} is also attached to "
                + ", ".join(others)] if others else []
    node = Path(f"/sys/dev/block/{os.major(ident[1])}:{os.minor(ident[1])}")
    disk = whole_disk(Path(os.path.realpath(node)).name)
    if disk in seen:
        return []
    return [f"/dev/{name}: its backing device {why}" for why in _busy_reasons(
        disk, _sys_partitions(disk), medium, seen | {name})]


def _probe(dev: str) -> dict[str, str]:
    """blkid's low-level probe of one device: TYPE, LABEL, ... (empty when nothing is found)."""
    proc = runcmd.run(["blkid", "-p", "-o", "export", dev], check=False)
    pairs = (line.split("=", 1) for line in proc.stdout.decode(errors="replace").splitlines())
    return {p[0]: p[1] for p in pairs if len(p) == 2}


def carries_medium_label(node: dict[str, Any]) -> bool:
    """True if an lsblk node (disk or partition) holds the rescue image's ISO 9660 file
    system. The rescue system runs from RAM, so the medium is never mounted: its label is
    what gives it away."""
    fstype, label = node.get("fstype"), node.get("label")
    dev = f"/dev/{node['name']}"
    if fstype is None and os.path.exists(dev):
        # Without a udev database (containers, before coldplug) lsblk knows no labels.
        probed = _probe(dev)
        fstype, label = probed.get("TYPE"), probed.get("LABEL")
    return fstype == "iso9660" and label == MEDIUM_LABEL


def _busy_reasons(name: str, children: list[str], medium: set[str],
                  seen: frozenset[str] = frozenset()) -> list[str]:
    """`seen`: the loop devices over `name` whose own reasons these are (_backing_reasons),
    not counted as users of it."""
    reasons = []
    mounted = _mounted_devices()
    for dev in [name, *children]:
        where = mounted.get("/dev/" + dev)
        if where:
            reasons.append(f"/dev/{dev} is mounted on {where}")
        holders = Path("/sys/class/block") / dev / "holders"
        if holders.is_dir() and any(holders.iterdir()):
            held = ", ".join(sorted(h.name for h in holders.iterdir()))
            reasons.append(f"/dev/{dev} is in use by {held}")
        # A loop device over it (or over one of its partitions) leaves no holder and no
        # exclusive claim, but reads and writes it, and may be mounted itself.
        loops = [loop for loop in _loops_over(_block_identity(dev))
                 if loop.removeprefix("/dev/") not in seen]
        if loops:
            reasons.append(f"/dev/{dev} is the backing device of {', '.join(loops)}")
    reasons += _backing_reasons(name, medium, seen | {name})
    if not reasons and _claimed(f"/dev/{name}"):
        # What leaves no mount and no holder but claims the device: the second member of
        # a mounted multi-device btrfs, a program holding it open exclusively. A claimed
        # partition makes its whole disk refuse an exclusive open too (and a claimed disk
        # all its partitions): name the partitions when only some are claimed.
        parts = [c for c in children if _claimed(f"/dev/{c}")]
        which = (", ".join(f"/dev/{c}" for c in parts) if 0 < len(parts) < len(children)
                 else f"/dev/{name}")
        reasons.append(f"{which} in use (opened exclusively: a member of a mounted "
                       "multi-device filesystem, or held open by a program)")
    if name in medium:
        reasons.append(f"/dev/{name} holds the rescue medium")
    return reasons


def _claimed(dev: str) -> bool:
    """True if the kernel refuses an exclusive open of block device `dev` (EBUSY)."""
    try:
        fd = os.open(dev, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        return exc.errno == errno.EBUSY
    os.close(fd)
    return False


def _hardware_path(name: str) -> str | None:
    device = Path("/sys/class/block") / name / "device"
    return os.path.realpath(device) if device.exists() else None


def _describe_block(dev: dict[str, Any], medium: set[str]) -> LocalDisk:
    name = dev["name"]
    children = [c["name"] for c in dev.get("children") or []]
    contents = [f"{dev.get('pttype')} partition table"] if dev.get("pttype") else []
    for node in [dev, *(dev.get("children") or [])]:
        if node.get("fstype"):
            contents.append(f"{node['name']}: {node['fstype']}"
                            + (f" {node['label']!r}" if node.get("label") else ""))
    busy = _busy_reasons(name, children, medium)
    if name not in medium and any(carries_medium_label(n)
                                  for n in [dev, *(dev.get("children") or [])]):
        busy.append(f"/dev/{name} is the boot medium (ISO 9660 label {MEDIUM_LABEL})")
    return LocalDisk(
        path=f"/dev/{name}", name=name, size=int(dev["size"]),
        logical_sector_size=int(dev.get("log-sec") or 512),
        model=(dev.get("model") or "").strip() or None,
        serial=(dev.get("serial") or "").strip() or None,
        wwn=dev.get("wwn") or None, transport=dev.get("tran") or None,
        read_only=bool(dev.get("ro")), hardware=_hardware_path(name), contents=contents,
        busy=busy)


def _lsblk(paths: list[str]) -> list[dict[str, Any]]:
    doc = runcmd.run_json(["lsblk", "-J", "-O", "-b", *paths])
    return list(doc.get("blockdevices") or [])


def discover_disks() -> list[LocalDisk]:
    """Every local whole disk, in kernel name order (loop devices included, so tests and
    image-based restores can see them; the planner never picks them automatically)."""
    medium = rescue_medium_names()
    disks = [_describe_block(dev, medium) for dev in _lsblk([])
             if dev.get("type") in ("disk", "loop")
             and not str(dev["name"]).startswith(_SKIP_PREFIXES)]
    return sorted(disks, key=lambda d: d.name)


def describe_target(path: str) -> LocalDisk:
    """Describe one explicit target: a whole block device or a regular (image) file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"target {path} does not exist (for an image file, create it "
                         "first with the size you want: truncate -s SIZE FILE)") from None
    if stat.S_ISBLK(mode):
        real = os.path.realpath(path)
        devs = _lsblk([real])
        if not devs or devs[0].get("type") not in ("disk", "loop"):
            raise UsageError(f"{path} is not a whole disk: name the disk, not a partition")
        return _describe_block(devs[0], rescue_medium_names())
    if not stat.S_ISREG(mode):
        raise UsageError(f"{path} is neither a block device nor a regular file")
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
    busy = [f"{path} is attached to {loop}" for loop in _attached_loops(path)]
    # The real path, as a block device's is its /dev/NAME: a symlink to a file planned as
    # well as the file itself is the same target, and must be seen as one.
    real = os.path.realpath(path)
    return LocalDisk(path=real, name=Path(real).name, size=size,
                     is_file=True, transport="file", busy=busy)
