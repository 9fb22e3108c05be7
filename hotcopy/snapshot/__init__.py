"""Point-in-time views of the protected sources, always removed afterwards.

`take(volumes, state_dir)` is a context manager that yields, for every volume, the place
to read its bytes from at one moment. What it uses per source:

- regular image file: a reflink copy (`cp --reflink=always`) where the filesystem supports
  it, else the file read as it is. A file that changes while it is read gives a torn copy:
  pause its writer (or put it on a reflink-capable filesystem such as XFS or btrfs);
- loop device: read as it is (the same rule applies to its backing file);
- LVM logical volume: an LVM snapshot (thick, sized from the VG's free extents; thin for
  thin LVs) named with the fixed prefix `cdpsnap_`;
- any other block device (a whole disk, a partition): `fsfreeze` of every filesystem
  mounted on it or on its partitions for the read (LVM PVs excepted: their LVs are volumes
  of their own); an unused device is read as it is.

Leftovers of a killed run (reflink copies, snapshot LVs, a frozen filesystem) carry fixed
prefixes or a marker file, and `cleanup_leftovers` removes them at the start of a run
(a frozen filesystem is thawed at once by a guard process: see freeze.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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


def _noop() -> None:
    return None


def cleanup_leftovers(volumes: list[VolumeSpec], state_dir: Path) -> None:
    freeze.thaw_leftover(state_dir)
    for path in sorted({v.path for v in volumes}):
        if os.path.isfile(path):
            image.remove_leftovers(Path(path).parent)
    if any(lvm.is_lv(v.path) for v in volumes):
        lvm.remove_leftovers()


@contextlib.contextmanager
def take(volumes: list[VolumeSpec], state_dir: Path, *, reflink: bool = True,
         ) -> Iterator[dict[str, ReadView]]:
    views: dict[str, ReadView] = {}
    with contextlib.ExitStack() as stack:
        by_path: dict[str, tuple[str, Callable[[], None]]] = {}
        paths = sorted({v.path for v in volumes})
        lvs = [p for p in paths if lvm.is_lv(p)]
        for path in paths:
            mode = os.stat(path).st_mode
            if stat.S_ISREG(mode):
                read_path = stack.enter_context(image.snapshot(path)) if reflink else path
                by_path[path] = (read_path, _noop)
            elif path in lvs:
                # The VG's free extents are shared among the snapshots still to be made.
                by_path[path] = stack.enter_context(lvm.snapshot(path, share=len(lvs)))
                lvs.remove(path)
            elif Path(path).name.startswith("loop"):
                by_path[path] = (path, _noop)
            else:
                stack.enter_context(freeze.frozen(path, state_dir))
                by_path[path] = (path, _noop)
        for v in volumes:
            read_path, check = by_path[v.path]
            views[v.name] = ReadView(read_path, v.offset, v.size, check)
        yield views
