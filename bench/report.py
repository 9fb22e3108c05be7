"""Turning raw samples into the published figures: medians with min-max over the runs,
ratios to restic, the targets of issue #9 checked, and the Markdown table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

KiB = 1024
MiB = 1024 * KiB

#: Figures per tool, in table order: (key, label, unit).
FIGURES = [
    ("full_s", "Full backup time", "s"),
    ("full_cpu_s", "Full backup CPU (user+sys, with our server's)", "s"),
    ("full_rss_mib", "Full backup peak memory (largest process)", "MiB"),
    ("server_rss_mib", "Server peak memory (whole run)", "MiB"),
    ("incr_s", "Incremental backup time", "s"),
    ("incr_cpu_s", "Incremental backup CPU", "s"),
    ("incr_resident_s", "Incremental backup time, resident agent (as `cdp-agent run`)", "s"),
    ("incr_resident_cpu_s", "Incremental backup CPU, resident agent", "s"),
    ("growth_x", "Repository growth / changed bytes", "x"),
    ("restore_s", "Restore time (to a file, fsynced)", "s"),
    ("restore_floor_s", "Restore floor: the non-zero 16 KiB blocks written from memory, fsynced",
     "s"),
    ("start_floor_s", "Python start and the agent's imports, cold cache", "s"),
    ("full_repo_mib", "Repository after the full backup", "MiB"),
]


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, unit: str) -> str:
        digits = 2 if self.median < 10 else 1
        if self.n == 1 or self.low == self.high:
            return f"{self.median:.{digits}f} {unit}"
        return f"{self.median:.{digits}f} {unit} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def summarize(raw: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Stat]]:
    return {tool: {key: Stat.of(vals) for key, vals in figs.items() if vals}
            for tool, figs in raw.items()}


def ratio(summary: dict[str, dict[str, Stat]], tool: str, key: str,
          base: str = "restic", base_key: str | None = None) -> float | None:
    """`tool`'s median of `key` over `base`'s median of `base_key` (default: `key`)."""
    try:
        ref = summary[base][base_key or key].median
        return summary[tool][key].median / ref if ref else None
    except KeyError:
        return None


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: float | None  # None: not measured in this run
    limit: float
    unit: str

    @property
    def met(self) -> bool | None:
        return None if self.measured is None else self.measured <= self.limit

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "goal": self.goal, "measured": self.measured,
                "limit": self.limit, "unit": self.unit, "met": self.met}


def targets(summary: dict[str, dict[str, Stat]], empty_point_bytes: float | None,
            ) -> list[Target]:
    def med(tool: str, key: str) -> float | None:
        stat = summary.get(tool, {}).get(key)
        return None if stat is None else stat.median

    dd = med("limit", "restore_s")
    ours_restore = med("cdp-scan", "restore_s")
    return [
        Target("full backup", "<= 0.5x restic", ratio(summary, "cdp-scan", "full_s"), 0.5, "x"),
        Target("incremental, change tracking", "<= 0.05x restic",
               ratio(summary, "cdp-tracking", "incr_s"), 0.05, "x"),
        # As the deployed agent takes it: `cdp-agent run` (the systemd service) is one
        # long-lived process, so no Python start and no imports per point.
        Target("incremental, change tracking, resident agent", "<= 0.05x restic",
               ratio(summary, "cdp-tracking", "incr_resident_s", base_key="incr_s"),
               0.05, "x"),
        Target("incremental, scan", "<= 0.25x restic",
               ratio(summary, "cdp-scan", "incr_s"), 0.25, "x"),
        Target("incremental, scan, resident agent", "<= 0.25x restic",
               ratio(summary, "cdp-scan", "incr_resident_s", base_key="incr_s"), 0.25, "x"),
        Target("growth for the change", "<= 2.5x changed bytes",
               med("cdp-scan", "growth_x"), 2.5, "x"),
        Target("empty point on 1 TiB", "< 64 KiB",
               None if empty_point_bytes is None else empty_point_bytes / KiB, 64, "KiB"),
        Target("restore vs restic", "<= 0.33x restic",
               ratio(summary, "cdp-scan", "restore_s"), 0.33, "x"),
        Target("restore vs dd", "<= 2x dd",
               None if ours_restore is None or not dd else ours_restore / dd, 2.0, "x"),
    ]


def _cell(summary: dict[str, dict[str, Stat]], tool: str, key: str, unit: str) -> str:
    stat = summary.get(tool, {}).get(key)
    if stat is None:
        return "-"
    cell = stat.text(unit)
    r = ratio(summary, tool, key)
    if tool != "restic" and r is not None and key != "growth_x":
        cell += f" **{r:.2f}x**"
    return cell


def machine_text(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    versions = "; ".join(str(v) for v in doc.get("versions", {}).values())
    return (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, {m['os']}, kernel "
            f"{m['kernel']}, Python {m['python']}, work directory on {m['work_fs']}"
            + (f"; {versions}" if versions else ""))


def human(size: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", MiB)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def markdown(doc: dict[str, Any], summary: dict[str, dict[str, Stat]],
             goals: list[Target]) -> str:
    tools = [t for t in ("cdp-scan", "cdp-tracking", "restic", "borg", "limit") if t in summary]
    wl = doc["workload"]
    lines = [
        f"Command: `{doc['command']}` (run {doc['started']}, {doc.get('duration_s', '?')} s in "
        "all)", "",
        f"Machine: {machine_text(doc)}", "",
        f"Workload: {wl['size'] / MiB:.0f} MiB ext4 image (seed {wl['seed']}), change of "
        f"{wl['changed_bytes'] / MiB:.1f} MiB ({wl['changed_bytes']} bytes differ, "
        f"{wl['changed_blocks']} 4 KiB blocks). Medians of {doc['runs']} run(s), "
        "(min-max), **ratio to restic**; before each measured step "
        + ("the page cache was dropped (sync; echo 3 > /proc/sys/vm/drop_caches)."
           if doc.get("cache") == "drop" else
           "the image and repository files were evicted from the page cache."),
        "",
        "| Figure | " + " | ".join(tools) + " |",
        "|---|" + "---|" * len(tools),
    ]
    for key, label, unit in FIGURES:
        if any(key in summary[t] for t in tools):
            lines.append(f"| {label} | "
                         + " | ".join(_cell(summary, t, key, unit) for t in tools) + " |")
    restores = doc.get("restore_checks", {})
    if restores:
        lines.append("| Restore byte-for-byte equal | "
                     + " | ".join(restores.get(t, "-") for t in tools) + " |")
    lines += ["", "Limit: `cat` of the image to /dev/null (full backup column) and `dd` of "
              "the image to a file (restore column); the two floors are measured by the "
              "benchmark itself (bench/peers.py `write_floor`, `start_floor`).", ""]
    series = doc.get("series")
    if series:
        lines += [f"Series of {series['points']} points, one per simulated minute, on a "
                  f"{series['size'] / MiB:.0f} MiB image with light writes between points "
                  f"(about {series['changed_per_point'] / KiB:.0f} KiB changed per point):",
                  "", "| Tool | storage per point | CPU per point | wall per point |",
                  "|---|---|---|---|"]
        for tool, fig in series["tools"].items():
            lines.append(f"| {tool} | {fig['storage_per_point'] / KiB:.1f} KiB | "
                         f"{fig['cpu_per_point']:.2f} s | {fig['wall_per_point']:.2f} s |")
        lines.append("")
    empty = doc.get("empty_point")
    if empty:
        lines += [f"Empty point (nothing changed) on a {human(empty['volume_size'])} "
                  f"sparse volume: {empty['bytes']} bytes of repository growth "
                  f"({empty['note']}).", ""]
    if doc.get("errors"):
        lines += ["Failures in this run:", "", *[f"- {e}" for e in doc["errors"]], ""]
    lines += ["| Target (issue #9) | Goal | Measured | Met |", "|---|---|---|---|"]
    for g in goals:
        meas = "not measured" if g.measured is None else f"{g.measured:.3g} {g.unit}"
        met = {None: "-", True: "yes", False: "**no**"}[g.met]
        lines.append(f"| {g.name} | {g.goal} | {meas} | {met} |")
    return "\n".join(lines) + "\n"
