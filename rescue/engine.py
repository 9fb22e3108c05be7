"""The engine API that the CLI, the TUI and tests drive: discover -> plan -> execute.

`execute` runs a Plan's actions through a dispatch table, re-checks every target just
before the first write, records finished actions and per-volume progress in the resume
state, and reports what happens through an `on_event` callback (the engine knows nothing
about screens). A damaged block stops its volume only; the others are still restored, and
the execution then fails with every damaged range named.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from cdpcore.api import ObjectKind
from cdpcore.errors import CdpError, IntegrityError, SafetyError, TargetError
from cdpcore.layout import Layout

from . import bootloader, growfs, lvm, partition, swap, target
from .discover import LocalDisk, describe_target, discover_disks
from .mapping import map_disks
from .plan import Action, Plan, VerifyMode, build_plan, partition_device
from .repo import Repository
from .report import RestoreReport, VolumeReport
from .resize import ResizePolicy
from .state import (
    HEAD_MARK_BYTES,
    Mark,
    RestoreState,
    StateStore,
    default_state_dir,
    read_mark,
    target_identity,
)
from .stream import BlockDamaged, StreamOptions, StreamResult, stream_volume
from .verify import verify_volume

log = logging.getLogger("cdp.rescue")
EventKind = Literal["start", "progress", "done", "skip", "failed", "note"]
#: The last steps of a plan, which change restored filesystems on purpose (growing one,
#: the boot loader's mounts): a resume state saved once only they are left does not
#: vouch for the volumes' first blocks (_mark_regions), which they rewrite.
POST_STEPS = ("grow_fs", "bootloader")


@dataclass
class Event:
    kind: EventKind
    action: Action | None = None
    done: int = 0  # bytes of this action done so far
    total: int = 0
    message: str = ""


EventSink = Callable[[Event], None]


@dataclass
class ExecuteOptions:
    dry_run: bool = False
    state_dir: str | None = None  # default: next to the targets if all are files, or /run
    stream: StreamOptions = field(default_factory=StreamOptions)


class Engine:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def discover(self) -> list[LocalDisk]:
        return discover_disks()

    def plan(self, point: str, maps: dict[str, str] | None = None, *,
             resize: ResizePolicy = "same", verify: VerifyMode = "blocks",
             grow_fs: bool = True, reinstall_bootloader: bool = False,
             local: list[LocalDisk] | None = None) -> Plan:
        """Plan restoring the point `point` names ("latest", an ID or prefix, a time)."""
        info = self.repo.choose(point)
        opened = self.repo.open_point(info.point_id)
        layout: Layout = opened.manifest.layout
        explicit = {src: describe_target(path) for src, path in (maps or {}).items()}
        refuse_hard_links(explicit)
        disks = local if local is not None or len(explicit) == len(layout.disks) \
            else self.discover()
        matches = map_disks(layout.disks, disks or [], explicit)
        return build_plan(self.repo.host, info.point_id, info.created, layout,
                          opened.manifest.volumes, matches, resize=resize, verify=verify,
                          grow_fs=grow_fs, reinstall_bootloader=reinstall_bootloader)

    def execute(self, plan: Plan, options: ExecuteOptions | None = None,
                on_event: EventSink | None = None) -> RestoreReport:
        return _Execution(self.repo, plan, options or ExecuteOptions(),
                          on_event or (lambda e: None)).run()


def refuse_hard_links(explicit: dict[str, LocalDisk]) -> None:
    """Refuse two source disks mapped onto one image file through a hard link: its real
    path is its own (a symlink resolves to the file, a hard link does not), so only the
    file's device and inode tell that they would overwrite each other."""
    seen: dict[tuple[int, int], tuple[str, str]] = {}  # (st_dev, st_ino) -> (source, path)
    for src, disk in explicit.items():
        if not disk.is_file:
            continue  # a block device's path is its kernel name already
        st = os.stat(disk.path)
        other = seen.setdefault((st.st_dev, st.st_ino), (src, disk.path))
        if other[1] != disk.path:  # the same path twice is map_disks' to refuse
            raise SafetyError(f"targets {other[1]} and {disk.path} are one file (hard "
                              f"links): it is chosen for two source disks, {other[0]} and "
                              f"{src}: map each source disk to a disk of its own")


def _on_disks(device: str, disks: set[str]) -> bool:
    """True if `device` is one of `disks` or a partition of one (partition_device)."""
    return device in disks or any(
        device.startswith(stem := partition_device(disk, 0)[:-1])
        and device[len(stem):].isdigit() for disk in disks)


def recheck_targets(plan: Plan) -> None:
    """Just before writing: every target must still be free and the very disk planned, and
    no action may write anything but the plan's disks and the LVs it recreates."""
    allowed = {dp.target.path for dp in plan.disks}
    vgs = {str(a.params["vg"]) for a in plan.actions if a.type == "lvm"}
    for action in plan.actions:
        if action.type == "lvm":
            # pvcreate writes its PV devices: each a plan disk or one of its partitions.
            outside = [str(dev) for dev in dict(action.params["pv_devices"]).values()
                       if not _on_disks(str(dev), allowed)]
            if outside:
                raise SafetyError(f"plan action {action.id} makes physical volumes on "
                                  + ", ".join(outside) + ", which are not on a target disk "
                                  "of the plan")
            continue
        if action.target in allowed or any(
                action.target.startswith(f"/dev/{vg}/") for vg in vgs):
            continue
        raise SafetyError(f"plan action {action.id} writes {action.target}, which is not a "
                          "target disk of the plan")
    for dp in plan.disks:
        now = describe_target(dp.target.path)
        if now.busy:
            raise SafetyError(f"refusing to write {now.path}: " + "; ".join(now.busy))
        if (now.size, now.serial, now.wwn) != (dp.target.size, dp.target.serial, dp.target.wwn):
            raise SafetyError(f"target {now.path} is not the disk the plan was made for "
                              f"(size {now.size}, serial {now.serial}; the plan expects size "
                              f"{dp.target.size}, serial {dp.target.serial}): plan again")
        # Without serial or WWN, same-size disks differ only in where they are attached:
        # their names may have swapped since the plan (another boot, another order).
        if dp.target.hardware is not None and now.hardware != dp.target.hardware:
            raise SafetyError(f"target {now.path} is not the disk the plan was made for: it "
                              f"is attached at {now.hardware}, the plan's disk at "
                              f"{dp.target.hardware} (disk names can change between boots):"
                              " plan again")
    restored = {str(a.params["vg"]): set(a.params["pv_devices"]) for a in plan.actions
                if a.type == "lvm"}
    if restored:
        targets = {os.path.basename(os.path.realpath(dp.target.path)) for dp in plan.disks}
        foreign = lvm.foreign_pvs(restored, targets)
        if foreign:
            raise SafetyError(
                "refusing to recreate volume group " + ", ".join(sorted(restored)) + ": "
                "disks outside the plan carry the same VG name or PV UUIDs: "
                + "; ".join(foreign) + ". Two copies would confuse LVM (and the restored "
                "system's boot): detach those disks, or wipe their LVM labels "
                "(`wipefs --all DEVICE`), or restore onto them")


class _Execution:
    def __init__(self, repo: Repository, plan: Plan, opts: ExecuteOptions,
                 emit: EventSink) -> None:
        self.repo, self.plan, self.opts, self.emit = repo, plan, opts, emit
        self.report = RestoreReport(host=plan.host, point_id=plan.point_id,
                                    started=time.time(), dry_run=opts.dry_run,
                                    notes=list(plan.notes))
        self.store = StateStore(opts.state_dir or default_state_dir(plan), plan)
        self.state: RestoreState = self.store.fresh()
        self.failed_volumes: set[str] = set()
        self.volumes = {v.name: v for v in plan.volumes}
        self.layout: Layout | None = None
        self.codec = repo.codec
        if not opts.dry_run:
            opened = repo.open_point(plan.point_id)
            self.codec = opened.codec
            if any(a.type == "lvm" for a in plan.actions):
                self.layout = opened.manifest.layout

    def run(self) -> RestoreReport:
        if self.opts.dry_run:
            for action in self.plan.actions:
                self.emit(Event("skip", action, message=f"dry run: would {action.description}"))
            self.report.ok = True
            self.report.finished = time.time()
            return self.report
        if self.plan.verify_only:  # it reads: a restore may not be running, but is let be
            return self._run()
        # Held from before the checks to the end: two restores never write one target.
        with target.locked([dp.target.path for dp in self.plan.disks]):
            return self._run()

    def _run(self) -> RestoreReport:
        recheck_targets(self.plan)
        self.store.prepare()
        # A check never resumes: what an earlier run read may have changed since, and a
        # volume skipped here would be reported as matching without being read.
        saved = None if self.plan.verify_only else self.store.load()
        changed = self._targets_changed(saved) if saved is not None else None
        if changed is not None:
            # Its finished steps and written blocks are not on the targets any more (made
            # again, zeroed, partitioned again, another disk under the name): skipping them
            # would leave whatever is there now in the restore. A fresh start rewrites all.
            self.emit(Event("note", message=f"resume state {self.store.path} does not fit "
                            f"the targets: {changed}: the restore starts over"))
            self.store.remove()
            saved = None
        if saved is not None:
            self.state = saved
            self.emit(Event("note", message=f"resuming from {self.store.path}: "
                            f"{len(saved.done_actions)} actions already done"))
        elif not self.plan.verify_only:  # it writes the targets
            for stale in self.store.forget_others():
                self.emit(Event("note", message=f"removed {stale}: that restore's targets "
                                "are overwritten now, it cannot be resumed"))
        handlers: dict[str, Callable[[Action], None]] = {
            "wipe": lambda a: target.wipe(a.target),
            "partition_table": self._table, "stream": self._stream, "swap": self._swap,
            "lvm": self._lvm, "verify": self._verify,
            "grow_fs": lambda a: self.report.notes.extend(
                growfs.grow(a.target, a.offset, a.size, str(a.params["fstype"]))),
            "bootloader": self._bootloader}
        completed = False
        try:
            for action in self.plan.actions:
                self._one(action, handlers[action.type])
            completed = True
        finally:
            self.report.finished = time.time()
            # Not just "no errors recorded": whatever stopped the run unrecorded (an
            # interrupt) must not leave a report that says the restore succeeded.
            self.report.ok = completed and not self.report.errors
            self.report.save(self.store.path.parent, self.plan.files_stem())
        if self.report.errors:
            raise IntegrityError("; ".join(self.report.errors))
        self.store.remove()
        return self.report

    def _mark_regions(self, state: RestoreState) -> list[tuple[str, int, int]]:
        """What the state vouches for on the targets: each disk's first bytes (its table
        and boot code, or a whole-disk volume's first blocks), the last synced block of
        each volume with blocks written and, until only the steps that rewrite restored
        filesystems on purpose are left (POST_STEPS: they replay journals, mount, rewrite
        superblocks), its first block: where a filesystem made, mounted or wiped between
        the runs on a partition restored already writes, and its last block does not
        show (a resume skipped that volume, and said ok with the new filesystem in it)."""
        heads = {dp.target.path: min(dp.target.size, HEAD_MARK_BYTES)
                 for dp in self.plan.disks if dp.target.size}
        regions = [(path, 0, length) for path, length in heads.items()]
        streams = {a.volume: a for a in self.plan.actions if a.type == "stream"}
        first_too = any(a.type not in POST_STEPS and a.id not in state.done_actions
                        for a in self.plan.actions)
        for name, blocks in sorted(state.volume_blocks.items()):
            vol, act = self.volumes.get(name), streams.get(name)
            last = min(blocks, vol.geometry.blocks) - 1 if vol is not None else -1
            if vol is not None and act is not None and last >= 0:
                regions.append((act.target, act.offset + last * vol.block_size,
                                vol.geometry.block_length(last)))
                length = vol.geometry.block_length(0)
                if first_too and last > 0 and act.offset + length > heads.get(act.target, 0):
                    regions.append((act.target, act.offset, length))  # not in the head's
        return regions

    def _save(self) -> None:
        """Save the state with what its targets are and hold now (_targets_changed)."""
        self.state.identities = {dp.target.path: target_identity(dp.target.path)
                                 for dp in self.plan.disks}
        self.state.marks = [(path, offset, length,
                             read_mark(path, offset, length, self.codec.keys.chunk_id))
                            for path, offset, length in self._mark_regions(self.state)]
        self.store.save(self.state)

    def _targets_changed(self, saved: RestoreState) -> str | None:
        """Why `saved` cannot be resumed on the targets as they are now, or None."""
        if not saved.identities or not saved.marks:
            return "it does not record what its targets held (an earlier version wrote it)"
        for path, was in sorted(saved.identities.items()):
            try:
                now = target_identity(path)
            except OSError as exc:
                now = f"unreadable ({exc.strerror or exc})"
            if now != was:
                return (f"{path} is not the disk or file the interrupted restore wrote "
                        f"({was} then, {now} now)")
        mark: Mark
        for mark in saved.marks:
            path, offset, length, digest = mark
            try:
                same = read_mark(path, offset, length, self.codec.keys.chunk_id) == digest
            except OSError:
                same = False
            if not same:
                return (f"{path} no longer holds what the interrupted restore wrote (bytes "
                        f"{offset}-{offset + length - 1} changed since)")
        return None

    def _one(self, action: Action, handler: Callable[[Action], None]) -> None:
        record = {"id": action.id, "type": action.type, "device": action.target,
                  "offset": action.offset, "size": action.size}
        if action.id in self.state.done_actions:
            self.emit(Event("skip", action, message="already done (resume)"))
            self.report.actions.append({**record, "status": "done earlier"})
            return
        if action.volume in self.failed_volumes:
            self.report.actions.append({**record, "status": "skipped: volume failed"})
            return
        self.emit(Event("start", action, total=action.size, message=action.description))
        try:
            try:
                handler(action)
            except OSError as exc:
                if exc.errno is None:  # not a system call's error (requests' are OSErrors)
                    raise
                # The target's own I/O (wipe, table, boot area): exit 12, and a rerun resumes.
                raise TargetError(f"could not {action.description}: {exc}") from exc
        except BlockDamaged as exc:
            self.failed_volumes.add(exc.volume)
            self.report.errors.append(str(exc))
            self.report.actions.append({**record, "status": "failed", "error": str(exc)})
            self.emit(Event("failed", action, message=str(exc)))
            return
        except Exception as exc:  # a CdpError, or an unexpected one (libparted's)
            message = str(exc) if isinstance(exc, CdpError) else f"{action.description}: {exc}"
            self.report.errors.append(message)
            self.report.actions.append({**record, "status": "failed", "error": message})
            self.emit(Event("failed", action, message=message))
            raise
        self.state.done_actions.append(action.id)
        if not self.plan.verify_only:  # a check keeps no resume state (above)
            self._save()
        self.report.actions.append({**record, "status": "done"})
        self.emit(Event("done", action, done=action.size, total=action.size))

    def _table(self, action: Action) -> None:
        dp = next(d for d in self.plan.disks if d.target.path == action.target)
        partition.write_table(action.target, dp.layout)

    def _swap(self, action: Action) -> None:
        swap.make_swap(action.target, action.offset, action.size, action.params.get("uuid"),
                       action.params.get("label"))

    def _lvm(self, action: Action) -> None:
        assert self.layout is not None
        vg = next(v for v in self.layout.volume_groups if v.name == action.params["vg"])
        self.report.notes.extend(lvm.recreate_vg(vg, dict(action.params["pv_devices"])))

    def _bootloader(self, action: Action) -> None:
        self.report.notes.extend(bootloader.reinstall(
            action.target, str(action.params["boot_mode"]),
            [str(c) for c in action.params["candidates"]],
            [str(d) for d in action.params["devices"]]))

    def _stream(self, action: Action) -> None:
        assert action.volume is not None
        vol = self.volumes[action.volume]
        # "read-back" only once the read-back has passed (_verify): until then, and if
        # it fails or never runs, the per-block checks are all that vouch for it.
        rep = VolumeReport(volume=vol.name, target=action.target, offset=action.offset,
                           size=vol.size, verified="blocks")
        self.report.volumes.append(rep)
        start = self.state.volume_blocks.get(vol.name, 0)
        done = min(start * vol.block_size, vol.size)
        began = time.monotonic()
        # Filled in as batches land: a volume that fails part-way reports what it wrote.
        result = StreamResult()

        def progress(nbytes: int) -> None:
            nonlocal done
            done += nbytes
            self.emit(Event("progress", action, done=done, total=vol.size))

        def checkpoint(blocks: int) -> None:
            self.state.volume_blocks[vol.name] = blocks
            self._save()

        try:
            with target.Target(action.target,
                               reads_zero=bool(action.params.get("unprovisioned"))) as tgt:
                stream_volume(self.repo.client, self.repo.host, self.codec, vol, tgt,
                              action.offset, start_block=start, options=self.opts.stream,
                              on_progress=progress, on_checkpoint=checkpoint, result=result)
        except BlockDamaged as exc:
            rep.error, rep.verified = str(exc), "failed"
            raise
        finally:
            rep.seconds = time.monotonic() - began
            rep.written, rep.zeroed, rep.resumed = result.written, result.zeroed, result.resumed

    def _verify(self, action: Action) -> None:
        assert action.volume is not None
        vol = self.volumes[action.volume]
        done = 0

        def progress(nbytes: int) -> None:
            nonlocal done
            done += nbytes
            self.emit(Event("progress", action, done=done, total=vol.size))

        def chunk(cid: bytes) -> bytes:
            return self.repo.client.fetch(self.repo.host, ObjectKind.chunks, [cid])[cid]

        ignore = [(int(b), int(e)) for b, e in action.params.get("ignore", [])]
        reps = [rep for rep in self.report.volumes if rep.volume == vol.name]
        try:
            with target.Target(action.target) as tgt:
                verify_volume(self.repo.client.page_source(self.repo.host), self.codec, vol,
                              tgt, action.offset, progress, ignore=ignore, chunks=chunk)
        except IntegrityError as exc:
            for rep in reps:
                rep.verified, rep.error = "failed", str(exc)
            if self.plan.verify_only:
                raise
            # The target does not hold what was written. A resume would skip the written
            # volumes and fail the same way every time: a rerun starts over instead.
            self.store.remove()
            raise IntegrityError(f"{exc}; the resume state is discarded: running the "
                                 "restore again writes every target again") from exc
        for rep in reps:
            rep.verified = "read-back"
