"""Sizes as people read them, shared by every part's messages and listings."""

from __future__ import annotations


def human(n: int) -> str:
    """`n` bytes in binary units with one decimal ("1.5 GiB"); below 1 KiB, exact ("512 B")."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"
