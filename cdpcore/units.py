"""Sizes as people read them, shared by every part's messages and listings."""

from __future__ import annotations


def human(n: int) -> str:
    """`n` bytes in binary units with one decimal ("1.5 GiB"); below 1 KiB, exact ("512 B")."""
    if n < 1024:
        return f"{n} B"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        # Compared as printed: 1048575 bytes are "1.0 MiB", not "1024.0 KiB".
        if round(size, 1) < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"
