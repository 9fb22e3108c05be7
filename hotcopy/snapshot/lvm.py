"""LVM snapshots of logical volumes: thin LVs get a thin snapshot, others a thick one
sized from the volume group's free extents. A thick snapshot that fills up becomes
invalid; the view's check reports that as a SnapshotError, so no torn data is committed.

Every snapshot is tagged with its agent's owner tag (from the host's state directory) and
named `cdpsnap_<8 hex of the tag>_<LV>`, so that the cleanup of a killed run's leftovers
removes only the snapshots of that agent, and two agents on one machine never need the
same name."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cdpcore import runcmd
from cdpcore.errors import CommandFailed

from ..errors import SnapshotError
from ..lvmcapture import SNAPSHOT_PREFIX as PREFIX

log = logging.getLogger("cdp.agent.snapshot")
TAG_PREFIX = "cdp_agent_"
MAX_LV_NAME = 127  # lvm2's NAME_LEN, less its terminating NUL


def owner_tag(state_dir: Path) -> str:
    """The LVM tag of the snapshots taken for one host's state directory."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(state_dir))).hexdigest()
    return TAG_PREFIX + digest[:16]


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


def snapshot_name(lv: str, tag: str) -> str:
    """The name of the snapshot of `lv` that the agent of owner tag `tag` takes."""
    return f"{PREFIX}{tag.removeprefix(TAG_PREFIX)[:8]}_{lv}"[:MAX_LV_NAME]


def leftovers(doc: dict[str, Any], tag: str) -> list[str]:
    """The snapshots (VG/LV) to remove, from `lvs --reportformat json -o
    vg_name,lv_name,lv_tags`: those tagged `tag`, and untagged ones (left by an agent from
    before the tags). Another agent's snapshots are left alone."""
    out = []
    for lv in doc["report"][0]["lv"]:
        tags = [t for t in (lv.get("lv_tags") or "").split(",") if t.startswith(TAG_PREFIX)]
        if lv["lv_name"].startswith(PREFIX) and tags in ([], [tag]):
            out.append(f"{lv['vg_name']}/{lv['lv_name']}")
    return out


def remove_leftovers(tag: str) -> None:
    doc = runcmd.run_json(["lvs", "--reportformat", "json", "-o", "vg_name,lv_name,lv_tags"])
    for name in leftovers(doc, tag):
        log.warning("removing leftover snapshot %s", name)
        runcmd.run(["lvremove", "-f", name])


@contextlib.contextmanager
def snapshot(path: str, tag: str, share: int = 1,
             ) -> Iterator[tuple[str, Callable[[], None]]]:
    """Snapshot one LV, tagged `tag`; a thick one gets 1/`share` of the VG's free
    extents."""
    lv = _lv(path)
    vg, name = lv["vg_name"], lv["lv_name"]
    snap = snapshot_name(name, tag)
    create = ["lvcreate", "-q", "-s", "--addtag", tag, "-n", snap]
    if lv["segtype"] == "thin":
        runcmd.run([*create, "-kn", f"{vg}/{name}"])
    else:
        free = int(lv["vg_free_count"] or 0) // max(share, 1)
        if free < 1:
            raise SnapshotError(f"volume group {vg} has no free extents for a snapshot of "
                                f"{name}: free some space in it")
        runcmd.run([*create, "-l", str(free), f"{vg}/{name}"])

    def check() -> None:
        attr = _lv(f"{vg}/{snap}")["lv_attr"]
        if len(attr) > 4 and attr[4] in "Ii":
            raise SnapshotError(f"snapshot of {vg}/{name} overflowed while it was read "
                                "(too many writes): the point was not committed")

    try:
        yield f"/dev/{vg}/{snap}", check
    finally:
        # Not raised: the point's own outcome (or error) is what the caller must hear.
        try:
            runcmd.run(["lvremove", "-q", "-f", f"{vg}/{snap}"])
        except CommandFailed as exc:
            log.warning("could not remove snapshot %s/%s of %s/%s: the next point of this "
                        "agent removes it first (%s)", vg, snap, vg, name, exc)
