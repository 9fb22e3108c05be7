"""Mapping source disks of a point to local target disks (pure).

Explicit `--map SRC=TARGET` wins. Otherwise a source disk goes to the local disk with the
same WWN or serial, then to the one disk of the same size and model; two equally
plausible targets are never chosen between: that is the classic wrong-disk mistake.
Loop devices and busy disks (mounted, rescue medium) are never picked automatically, and
while the source's own disk (same WWN or serial) is here but busy, read-only or taken, no
other disk stands in for it by its size. Two targets of one WWN (two paths to one LUN)
never take two source disks.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdpcore.errors import SafetyError, UsageError
from cdpcore.layout import Disk

from .discover import LocalDisk


@dataclass(frozen=True)
class Match:
    source: str
    target: LocalDisk
    reason: str


def parse_maps(items: list[str]) -> dict[str, str]:
    """`SRC=TARGET` strings -> {source disk name: target path}."""
    out: dict[str, str] = {}
    for item in items:
        src, sep, target = item.partition("=")
        if not sep or not src or not target:
            raise UsageError(f"--map {item!r}: expected SOURCE=TARGET, e.g. vda=/dev/sdb")
        if src in out:
            raise UsageError(f"--map names source disk {src!r} twice")
        out[src] = target
    return out


def _candidates(disks: list[LocalDisk]) -> list[LocalDisk]:
    return [d for d in disks if not d.busy and not d.read_only
            and not d.is_file and d.transport != "loop" and not d.name.startswith("loop")]


def _unusable(disk: LocalDisk, taken: dict[str, str]) -> str:
    """Why a local disk is no automatic target (it is not in the candidate pool)."""
    if disk.path in taken:
        return f"already the target of source disk {taken[disk.path]}"
    if disk.busy:
        return "; ".join(disk.busy)
    if disk.read_only:
        return "it is read-only"
    if disk.is_file or disk.transport == "loop" or disk.name.startswith("loop"):
        return "loop devices and image files are only targets by --map"
    return "it is not free"


def _auto(src: Disk, pool: list[LocalDisk], local: list[LocalDisk],
          taken: dict[str, str]) -> Match | None:
    for attr in ("wwn", "serial"):
        want = getattr(src, attr)
        if not want:
            continue
        same = [d for d in pool if getattr(d, attr) == want]
        if len(same) == 1:
            return Match(src.name, same[0], f"same {attr.upper()} {want}")
        if len(same) > 1:
            raise SafetyError(f"source disk {src.name}: {len(same)} local disks share "
                              f"{attr.upper()} {want} (" + ", ".join(d.path for d in same)
                              + "): choose one with --map")
        # The source's own disk is here but cannot be used (mounted, read-only, taken):
        # another disk of the same size is a guess, not that disk.
        own = [d for d in local if getattr(d, attr) == want]
        if own:
            raise SafetyError(
                f"source disk {src.name}: the local disk with its {attr.upper()} {want} "
                "cannot be a target (" + "; ".join(f"{d.path}: {_unusable(d, taken)}"
                                                   for d in own)
                + "); refusing to pick another disk by its size: free that disk, or "
                "choose a target with --map")
    for label, with_model in (("same size and model", True), ("same size", False)):
        hits = [d for d in pool
                if d.size == src.size and (not with_model or d.model == src.model)]
        if len(hits) == 1:
            return Match(src.name, hits[0], label)
        if len(hits) > 1:
            raise SafetyError(f"source disk {src.name} ({src.size} bytes): {len(hits)} local "
                              f"disks are equally plausible targets ({label}: "
                              + ", ".join(d.path for d in hits)
                              + "); refusing to guess: choose one with --map")
    return None


def map_disks(sources: list[Disk], local: list[LocalDisk],
              explicit: dict[str, LocalDisk]) -> list[Match]:
    """One Match per source disk, or an error naming the source that cannot be placed."""
    known = {d.name for d in sources}
    for name in explicit:
        if name not in known:
            raise UsageError(f"--map names source disk {name!r}, but the point has only "
                             + ", ".join(sorted(known)))
    matches: list[Match] = []
    taken: dict[str, str] = {}  # target path -> the source disk it holds
    for src in sources:
        if src.name in explicit:
            match = Match(src.name, explicit[src.name], "--map")
        else:
            targets = {t.path for t in explicit.values()}
            pool = [d for d in _candidates(local) if d.path not in taken
                    and d.path not in targets]
            # A disk --map gives to another source was repurposed on purpose.
            found = _auto(src, pool, [d for d in local if d.path not in targets], taken)
            if found is None:
                raise UsageError(f"no local disk matches source disk {src.name} "
                                 f"({src.size} bytes, serial {src.serial}, model {src.model}):"
                                 " name a target with --map " + src.name + "=TARGET")
            match = found
        if match.target.path in taken:
            raise SafetyError(f"target {match.target.path} is chosen for two source disks, "
                              f"{taken[match.target.path]} and {src.name}: map each source "
                              "disk to a disk of its own")
        twin = next((m for m in matches if match.target.wwn
                     and m.target.wwn == match.target.wwn), None)
        if twin is not None:
            # Two nodes of one WWN are one disk seen twice (the paths of a multipath LUN
            # without multipathd): both sources would be written onto it.
            raise SafetyError(f"targets {twin.target.path} (for source disk {twin.source}) "
                              f"and {match.target.path} (for {src.name}) have one WWN "
                              f"{match.target.wwn}: they are one disk seen twice (two paths "
                              "to one LUN?): map each source disk to a disk of its own")
        taken[match.target.path] = src.name
        matches.append(match)
    return matches
