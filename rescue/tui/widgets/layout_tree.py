"""A recovery point's layout as a tree: disks, partitions, volume groups, LVs and
filesystems, drawn with ASCII guides so it reads the same on a serial console."""

from __future__ import annotations

from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from cdpcore.layout import Filesystem, Layout
from cdpcore.units import human


def _fs(fs: Filesystem | None) -> str:
    if fs is None:
        return ""
    return f" {fs.type}" + (f" '{fs.label}'" if fs.label else "") + \
        (f" {fs.uuid}" if fs.uuid else "")


class LayoutTree(Tree[str]):
    ICON_NODE = "+ "
    ICON_NODE_EXPANDED = "- "
    LINES: dict[str, tuple[str, str, str, str]] = {  # noqa: RUF012 - Tree's own type
        "default": ("  ", "| ", "`-", "+-"),
        "bold": ("  ", "| ", "`-", "+-"),
        "double": ("  ", "| ", "`-", "+-"),
    }

    def __init__(self, **kwargs: object) -> None:
        super().__init__("layout", **kwargs)  # type: ignore[arg-type]
        self.show_root = False

    def show(self, layout: Layout | None, note: str = "") -> None:
        self.clear()
        if layout is None:
            self.root.add_leaf(note or "(no point selected)")
            return
        for disk in layout.disks:
            ident = " ".join(x for x in (disk.model, disk.serial) if x)
            node: TreeNode[str] = self.root.add(
                f"disk {disk.name} {human(disk.size)} {disk.table or 'no table'}"
                + (f" ({ident})" if ident else ""), expand=True)
            if disk.filesystem:
                node.add_leaf("whole disk:" + _fs(disk.filesystem))
            for part in disk.partitions:
                node.add_leaf(f"{part.number} {human(part.length * disk.logical_sector_size)}"
                              f" {part.role}{_fs(part.filesystem)}")
        for vg in layout.volume_groups:
            node = self.root.add(f"LVM VG {vg.name} on "
                                 + ", ".join(pv.device for pv in vg.pvs), expand=True)
            for lv in vg.lvs:
                node.add_leaf(f"LV {lv.name} {human(lv.size)} {lv.segtype}{_fs(lv.filesystem)}")
        self.root.expand()
