"""LVM snapshots of logical volumes: thin LVs get a thin snapshot, others a thick one
sized from the volume group's free extents. A thick snapshot that fills up becomes
invalid; the view's check reports that as a SnapshotError, so no torn data is committed."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from cdpcore import runcmd

from ..errors import SnapshotError

log = logging.getLogger("cdp.agent.snapshot")
PREFIX = "cdpsnap_"


def is_lv(path: str) -> bool:
    real = os.path.realpath(path)
    if not os.path.basename(real).startswith("dm-"):
        return False
    proc = runcmd.run(["lvs", "--noheadings", "-o", "lv_name", path], check=False)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _lv(path: str) -> dict[str, Any]:
    doc = runcmd.run_json(["lvs", "--reportformat", "json", "-o",
                           "vg_name,lv_name,segtype,vg_free_count,lv_attr", path])
    lv: dict[str, Any] = doc["report"][0]["lv"][0]
    return lv


def remove_leftovers() -> None:
    doc = runcmd.run_json(["lvs", "--reportformat", "json", "-o", "vg_name,lv_name"])
    for lv in doc["report"][0]["lv"]:
        if lv["lv_name"].startswith(PREFIX):
            log.warning("removing leftover snapshot %s/%s", lv["vg_name"], lv["lv_name"])
            runcmd.run(["lvremove", "-f", f"{lv['vg_name']}/{lv['lv_name']}"])


@contextlib.contextmanager
def snapshot(path: str, share: int = 1) -> Iterator[tuple[str, Callable[[], None]]]:
    """Snapshot one LV; a thick one gets 1/`share` of the VG's free extents."""
    lv = _lv(path)
    vg, name = lv["vg_name"], lv["lv_name"]
    snap = f"{PREFIX}{name}"
    if lv["segtype"] == "thin":
        runcmd.run(["lvcreate", "-q", "-s", "-kn", "-n", snap, f"{vg}/{name}"])
    else:
        free = int(lv["vg_free_count"] or 0) // max(share, 1)
        if free < 1:
            raise SnapshotError(f"volume group {vg} has no free extents for a snapshot of "
                                f"{name}: free some space in it")
        runcmd.run(["lvcreate", "-q", "-s", "-l", str(free), "-n", snap, f"{vg}/{name}"])

    def check() -> None:
        attr = _lv(f"{vg}/{snap}")["lv_attr"]
        if len(attr) > 4 and attr[4] in "Ii":
            raise SnapshotError(f"snapshot of {vg}/{name} overflowed while it was read "
                                "(too many writes): the point was not committed")

    try:
        yield f"/dev/{vg}/{snap}", check
    finally:
        runcmd.run(["lvremove", "-q", "-f", f"{vg}/{snap}"], check=False)
