"""Point-in-time views of the protected sources, always removed afterwards.

`take(volumes, state_dir)` is a context manager that yields, for every volume, the place
to read its bytes from at one moment. What it uses per source:

- regular image file: a reflink copy (`cp --reflink=always`) where the filesystem supports
  it, else the file read as it is. A file that changes while it is read gives a torn copy:
  pause its writer (or put it on a reflink-capable filesystem such as XFS or btrfs);
- loop device: read as it is (the same rule applies to its backing file);
- LVM logical volume: an LVM snapshot (thick, sized from the VG's free extents; thin for
  thin LVs) named with the fixed prefix `cdpsnap_` and tagged with the agent's owner tag.
  lvcreate freezes a filesystem mounted on the LV itself; one mounted on a device stacked
  over it (a dm-era or dm-crypt device) is frozen by the agent while the snapshot is made;
- any other block device (a whole disk, a partition): `fsfreeze` of every filesystem
  mounted on it or on its partitions for the read (LVM PVs excepted: their LVs are volumes
  of their own); an unused device is read as it is. A freeze blocks the filesystem's
  writers, so it ends as soon as the device's own blocks are read (`PointViews.thaw`),
  not with the views: the other sources' reads, the index pages and the commit (with its
  retries while the server is down) need no stable device.

Leftovers of a killed run (reflink copies, snapshot LVs, a frozen filesystem) carry fixed
prefixes and the agent's owner tag, or a marker file, and `cleanup_leftovers` removes
them at the start of a run: its own and untagged ones, never another agent's (a frozen
filesystem is thawed at once by a guard process: see freeze.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..capture import VolumeSpec
from . import freeze, image, lvm

log = logging.getLogger("cdp.agent.snapshot")


@dataclass(frozen=True)
class ReadView:
    """Where to read a volume's bytes, and a check to call after reading (raises
    SnapshotError when the view stopped being consistent, e.g. an overflowed snapshot)."""

    path: str
    offset: int
    size: int
    check: Callable[[], None]


@dataclass
class PointViews:
    """The views of one point's volumes, and the freezes that keep some sources still."""

    views: dict[str, ReadView]
    freezes: dict[str, contextlib.ExitStack]  # by source path

    def thaw(self, source: str) -> None:
        """End the freeze of `source` (if any): call once its volumes are read. Snapshots
        and reflink copies stay until the views are closed; a device that was frozen is
        read live from here on, so whatever is read from it again must be checked
        against its chunk ID."""
        if source in self.freezes:
            self.freezes.pop(source).close()


def _noop() -> None:
    return None


Kind = Literal["file", "lv", "loop", "device"]


def kind_of(path: str, lvs: list[str]) -> Kind:
    """How a source is held still: `lvs` are the sources that are logical volumes."""
    if stat.S_ISREG(os.stat(path).st_mode):
        return "file"
    if path in lvs:
        return "lv"
    return "loop" if Path(path).name.startswith("loop") else "device"


def cleanup_leftovers(volumes: list[VolumeSpec], state_dir: Path) -> None:
    freeze.thaw_leftover(state_dir)
    tag = lvm.owner_tag(state_dir)
    for path in sorted({v.path for v in volumes}):
        if os.path.isfile(path):
            image.remove_leftovers(Path(path).parent, tag)
    if any(lvm.is_lv(v.path) for v in volumes):
        lvm.remove_leftovers(tag)


@contextlib.contextmanager
def take(volumes: list[VolumeSpec], state_dir: Path, *, reflink: bool = True,
         max_freeze: float = 0) -> Iterator[PointViews]:
    """`max_freeze`: seconds a freeze may last (0: no limit); see freeze.frozen."""
    with contextlib.ExitStack() as stack:
        freezes: dict[str, contextlib.ExitStack] = {}
        by_path: dict[str, tuple[str, Callable[[], None]]] = {}
        paths = sorted({v.path for v in volumes})
        lvs = [p for p in paths if lvm.is_lv(p)]
        tag = lvm.owner_tag(state_dir)
        for path in paths:
            kind = kind_of(path, lvs)
            if kind == "file":
                read_path = stack.enter_context(image.snapshot(path, tag)) if reflink else path
                by_path[path] = (read_path, _noop)
            elif kind == "lv":
                # The VG's free extents are shared among the snapshots still to be made.
                # lvcreate freezes a filesystem mounted on the LV, not one mounted on a
                # device stacked over it (a dm-era or dm-crypt device): that one is frozen
                # while the snapshot is made.
                with freeze.frozen(path, state_dir, max_freeze, holders_only=True):
                    by_path[path] = stack.enter_context(
                        lvm.snapshot(path, tag, share=len(lvs)))
                lvs.remove(path)
            else:
                if kind == "device":
                    freezes[path] = stack.enter_context(contextlib.ExitStack())
                    freezes[path].enter_context(freeze.frozen(path, state_dir, max_freeze))
                by_path[path] = (path, _noop)
        views = {v.name: ReadView(by_path[v.path][0], v.offset, v.size, by_path[v.path][1])
                 for v in volumes}
        yield PointViews(views, freezes)
