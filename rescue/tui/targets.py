"""Which local disks a source disk may go to, and why not (pure): busy (mounted, swap,
holders, the rescue medium), read-only, too small for the layout, other sector size. The
engine re-checks all of this when planning and again just before writing."""

from __future__ import annotations

from cdpcore.errors import CdpError
from cdpcore.layout import Disk
from cdpcore.units import human

from ..discover import LocalDisk
from ..mapping import Match, map_disks
from ..resize import required_size


def problems(src: Disk, target: LocalDisk) -> list[str]:
    out = list(target.busy)
    if target.read_only:
        out.append("read-only")
    need = required_size(src)
    if target.size < need:
        out.append(f"too small: {human(target.size)}, needs {human(need)}")
    if not target.is_file and target.logical_sector_size != src.logical_sector_size:
        out.append(f"{target.logical_sector_size}-byte sectors, the source had "
                   f"{src.logical_sector_size}")
    return out


def automatic(sources: list[Disk], local: list[LocalDisk]) -> tuple[dict[str, Match], list[str]]:
    """The engine's automatic mapping, source by source where it cannot place them all:
    the matches it found and, for the rest, why not (its own words)."""
    try:
        return {m.source: m for m in map_disks(sources, local, {})}, []
    except CdpError:
        pass
    found: dict[str, Match] = {}
    why: list[str] = []
    for src in sources:
        try:
            found[src.name] = map_disks([src], local, {})[0]
        except CdpError as exc:
            why.append(str(exc))
    # Source by source, two sources may match the same disk: neither gets it (no guess).
    claims: dict[str, list[str]] = {}
    for name, match in found.items():
        claims.setdefault(match.target.path, []).append(name)
    for path, names in claims.items():
        if len(names) > 1:
            why.append(f"source disks {', '.join(names)} all match {path} "
                       f"({found[names[0]].reason}): choose their targets")
            for name in names:
                del found[name]
    return found, why
