"""Scroll bars without block glyphs: the thumb is drawn by its background colour only, so
the Linux console's font and serial terminals show it (the default uses U+2581..U+258F)."""

from __future__ import annotations

from typing import ClassVar

from textual.scrollbar import ScrollBar, ScrollBarRender


class AsciiScrollBarRender(ScrollBarRender):
    VERTICAL_BARS: ClassVar[list[str]] = [" "] * 8
    HORIZONTAL_BARS: ClassVar[list[str]] = [" "] * 8


def use_ascii_scrollbars() -> None:
    """Textual's documented switch is the class attribute: it applies to the process,
    which runs one rescue console."""
    ScrollBar.renderer = AsciiScrollBarRender
