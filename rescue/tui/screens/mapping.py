"""Map disks: each source disk of the point beside the target chosen for it (the engine's
automatic mapping first), editable; targets that are too small, busy (mounted, swap, the
rescue medium) or read-only are listed with the reason but cannot be picked."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, OptionList, Static
from textual.widgets.option_list import Option

from cdpcore.errors import UsageError
from cdpcore.layout import Layout
from cdpcore.units import human

from ...discover import LocalDisk, describe_target
from ...plan import VerifyMode
from ...resize import RESIZE_POLICIES, ResizePolicy
from .. import targets
from .base import RescueScreen


class MapScreen(RescueScreen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+n", "review", "Review plan"), Binding("r", "resize", "Resize"),
                Binding("v", "verify", "Verify mode"), Binding("g", "grow", "Grow FS"),
                Binding("i", "bootloader", "Bootloader"), Binding("u", "unmap", "Unmap")]

    def __init__(self) -> None:
        super().__init__()
        self.point_layout: Layout | None = None
        self.local: list[LocalDisk] = []
        self.chosen: dict[str, LocalDisk] = {}
        self.reasons: dict[str, str] = {}
        self.resize: ResizePolicy = "same"
        self.verify: VerifyMode = "blocks"
        self.grow_fs = True  # the engine's default: grow filesystems of enlarged partitions
        self.reinstall_bootloader = False  # for new hardware
        self.unplaced: list[str] = []  # why the engine placed no disk automatically

    def compose(self) -> ComposeResult:
        yield Static("4/6 Map source disks to target disks", classes="title")
        yield DataTable(id="sources", cursor_type="row")
        yield Static("Targets for the highlighted source (Enter picks):", classes="hint")
        yield OptionList(id="targets")
        yield Static("", id="map-info", classes="hint")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#sources", DataTable).add_columns(
            "Source", "Size", "Serial", "Model", "-> Target", "Chosen by")
        self._load()

    @work(thread=True, exclusive=True)
    def _load(self) -> None:
        state, settings = self.rescue.state, self.rescue.settings
        assert state.engine is not None and state.point is not None
        try:
            layout = state.engine.repo.open_point(state.point.point_id).manifest.layout
            local = state.engine.discover() if settings.discover else []
            local += [describe_target(path) for path in settings.targets]
        except Exception as exc:  # shown as a dialog
            self.app.call_from_thread(self.show_error, exc)
            return
        self.app.call_from_thread(self._loaded, layout, local)

    def _loaded(self, layout: Layout, local: list[LocalDisk]) -> None:
        self.point_layout, self.local = layout, local
        found, why = targets.automatic(layout.disks, local)
        for name, match in found.items():
            self.chosen[name], self.reasons[name] = match.target, match.reason
        self.unplaced = why
        self._refresh_sources()
        self.query_one("#sources", DataTable).focus()

    def _refresh_sources(self) -> None:
        assert self.point_layout is not None
        table = self.query_one("#sources", DataTable)
        row = table.cursor_row
        table.clear()
        for d in self.point_layout.disks:
            tgt = self.chosen.get(d.name)
            table.add_row(d.name, human(d.size), d.serial or "-", d.model or "-",
                          f"{tgt.name} ({human(tgt.size)})" if tgt else "(choose)",
                          self.reasons.get(d.name, ""), key=d.name)
        table.move_cursor(row=row)
        missing = [d.name for d in self.point_layout.disks if d.name not in self.chosen]
        self.query_one("#map-info", Static).update(
            f"resize: {self.resize} (r)  verify: {self.verify} (v)  grow filesystems: "
            f"{'yes' if self.grow_fs else 'no'} (g)\nreinstall bootloader: "
            f"{'yes' if self.reinstall_bootloader else 'no'} (i)   "
            + (f"unmapped: {', '.join(missing)}" if missing else "ctrl+n: review the plan")
            + "".join(f"\nautomatic: {why}" for why in self.unplaced if missing))

    def _source(self) -> str | None:
        table = self.query_one("#sources", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._refresh_targets()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.query_one("#targets", OptionList).focus()

    def _refresh_targets(self) -> None:
        name = self._source()
        opts = self.query_one("#targets", OptionList)
        opts.clear_options()
        if name is None or self.point_layout is None:
            return
        src = self.point_layout.disk(name)
        taken = {t.path for s, t in self.chosen.items() if s != name}
        for i, disk in enumerate(self.local):
            why = targets.problems(src, disk)
            if disk.path in taken:
                why.append("chosen for another source disk")
            ident = " ".join(x for x in (disk.model, disk.serial, disk.transport) if x)
            text = f"{disk.name:12} {human(disk.size):>10}  {ident}"
            if why:
                text += "  NOT SELECTABLE: " + "; ".join(why)
            opts.add_option(Option(text, id=str(i), disabled=bool(why)))
        enabled = [i for i in range(opts.option_count) if not opts.get_option_at_index(i).disabled]
        opts.highlighted = enabled[0] if enabled else None

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        name = self._source()
        if name is None or event.option.id is None:
            return
        self.chosen[name] = self.local[int(event.option.id)]
        self.reasons[name] = "chosen by you"
        self._refresh_sources()
        self.query_one("#sources", DataTable).focus()

    def action_unmap(self) -> None:
        name = self._source()
        if name is not None:
            self.chosen.pop(name, None)
            self._refresh_sources()

    def action_resize(self) -> None:
        self.resize = RESIZE_POLICIES[(RESIZE_POLICIES.index(self.resize) + 1)
                                      % len(RESIZE_POLICIES)]
        self._refresh_sources()

    def action_verify(self) -> None:
        self.verify = "read-back" if self.verify == "blocks" else "blocks"
        self._refresh_sources()

    def action_grow(self) -> None:
        self.grow_fs = not self.grow_fs
        self._refresh_sources()

    def action_bootloader(self) -> None:
        self.reinstall_bootloader = not self.reinstall_bootloader
        self._refresh_sources()

    def action_review(self) -> None:
        if self.point_layout is None:
            return
        missing = [d.name for d in self.point_layout.disks if d.name not in self.chosen]
        if missing:
            self.show_error(UsageError("choose a target for source disk "
                                       + ", ".join(missing)))
            return
        self._plan({src: disk.path for src, disk in self.chosen.items()})

    @work(thread=True, exclusive=True)
    def _plan(self, maps: dict[str, str]) -> None:
        state = self.rescue.state
        assert state.engine is not None and state.point is not None
        try:
            plan = state.engine.plan(state.point.point_id, maps, resize=self.resize,
                                     verify=self.verify, grow_fs=self.grow_fs,
                                     reinstall_bootloader=self.reinstall_bootloader,
                                     local=self.local)
        except Exception as exc:  # shown as a dialog
            self.app.call_from_thread(self.show_error, exc)
            return
        from .review import ReviewScreen
        self.app.call_from_thread(self.app.push_screen, ReviewScreen(plan, dict(self.reasons)))
