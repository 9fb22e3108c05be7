"""Hosts and the chosen host's recovery points: time, size, changed bytes, verify status,
pinned; filter by date; jump to the latest, the latest verified, or the newest before a
time; the highlighted point's layout as a tree."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Input, Static

from cdpcore.api import PointInfo, VerifyStatus
from cdpcore.errors import CdpError, NotFoundError
from cdpcore.layout import Layout
from cdpcore.points import local_time, select_point
from cdpcore.units import human

from .. import session
from ..widgets.layout_tree import LayoutTree
from .base import RescueScreen
from .dialogs import AskDialog

#: Short enough for the timeline to share 80 columns with the layout tree.
VERIFY_SHORT = {VerifyStatus.ok: "ok", VerifyStatus.unverified: "-",
                VerifyStatus.damaged: "DAMAGED"}


def filter_points(points: list[PointInfo], day: str) -> list[PointInfo]:
    """Points whose local time starts with `day` ("2026-11-24", "2026-11", "2026-11-24 10")."""
    return [p for p in points if local_time(p.created).startswith(day.strip())]


class PointsScreen(RescueScreen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("l", "latest", "Latest"), Binding("v", "verified", "Latest verified"),
                Binding("b", "before", "Before..."), Binding("slash", "filter", "Date filter"),
                Binding("h", "hosts", "Hosts", show=False)]

    def __init__(self) -> None:
        super().__init__()
        self.points: list[PointInfo] = []
        self.summary = ""  # "web1: 2 of 5 points on 2026-11-24", above the key hint
        self.layouts: dict[str, Layout] = {}

    def compose(self) -> ComposeResult:
        yield Static("3/6 Host and recovery point", classes="title")
        yield DataTable(id="hosts", cursor_type="row")
        yield Input(placeholder="/ filter by date: 2026-11-24", id="filter")
        with Horizontal():
            yield DataTable(id="points", cursor_type="row")
            with Vertical(id="tree"):
                yield LayoutTree(id="layout")
        yield Static("Enter: restore the highlighted point", classes="hint", id="info")
        yield Footer()

    def on_mount(self) -> None:
        hosts = self.query_one("#hosts", DataTable)
        hosts.add_columns("Host", "Points", "Newest")
        login = self.rescue.state.login
        assert login is not None
        for h in login.hosts:
            hosts.add_row(h.name, str(h.points), local_time(h.latest) if h.latest else "-", key=h.name)
        table = self.query_one("#points", DataTable)
        table.add_columns("Time", "Size", "Changed", "Verify", "Pin")
        if self.rescue.state.engine is not None:
            hosts.move_cursor(row=hosts.get_row_index(self.rescue.state.host))
            self._fetch_points()
            table.focus()
        else:
            hosts.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "hosts":
            self._open_host(str(event.row_key.value))
        elif event.data_table.id == "points" and event.row_key.value:
            self._choose(str(event.row_key.value))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "points" and event.row_key.value:
            self._show_layout(str(event.row_key.value))
            self._show_info(str(event.row_key.value))

    @work(thread=True, exclusive=True, group="host")
    def _open_host(self, host: str) -> None:
        state = self.rescue.state
        assert state.login is not None
        try:
            engine = session.open_engine(state.login.client, host, state.passphrase)
        except Exception as exc:  # shown as a dialog
            self.app.call_from_thread(self.show_error, exc)
            return
        state.host, state.engine = host, engine
        self.app.call_from_thread(self._fetch_points)

    @work(thread=True, exclusive=True, group="points")
    def _fetch_points(self) -> None:
        engine = self.rescue.state.engine
        assert engine is not None
        try:
            points = engine.repo.points()
        except Exception as exc:  # shown as a dialog
            self.app.call_from_thread(self.show_error, exc)
            return
        self.app.call_from_thread(self._fill, points)

    def _fill(self, points: list[PointInfo], day: str = "") -> None:
        self.points = points
        table = self.query_one("#points", DataTable)
        table.clear()
        shown = filter_points(points, day) if day else points
        for p in reversed(shown):  # newest first: the usual choice is at the top
            table.add_row(local_time(p.created)[:16], human(p.size), human(p.stats.changed_bytes),
                          VERIFY_SHORT[p.verify], "P" if p.pinned else "", key=p.point_id)
        self.summary = (f"{self.rescue.state.host}: {len(shown)} of {len(points)} points"
                        + (f" on {day}" if day else ""))
        self._show_info(None)
        if not shown:
            self.query_one("#layout", LayoutTree).show(None, "no point")

    def _show_info(self, point_id: str | None) -> None:
        """Name the highlighted point to the second: the timeline shows minutes only, and
        a monochrome serial terminal does not show the cursor row, which is only coloured."""
        point = next((p for p in self.points if p.point_id == point_id), None)
        self.query_one("#info", Static).update(
            f"{self.summary}. Enter: restore "
            + (local_time(point.created) if point else "the highlighted point"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._fill(self.points, event.value)
        self.query_one("#points", DataTable).focus()

    def _jump(self, point: PointInfo) -> None:
        table = self.query_one("#points", DataTable)
        if point.point_id not in {k.value for k in table.rows}:
            self._fill(self.points)  # the filter hid it
        table.move_cursor(row=table.get_row_index(point.point_id))
        table.focus()

    def action_latest(self) -> None:
        if self.points:
            self._jump(self.points[-1])

    def action_verified(self) -> None:
        ok = [p for p in self.points if p.verify is VerifyStatus.ok]
        if ok:
            self._jump(ok[-1])
        else:
            self.show_error(NotFoundError("no point of this host has been verified yet"))

    def action_before(self) -> None:
        def go(text: str | None) -> None:
            if not text:
                return
            try:
                self._jump(select_point(self.points, text, self.rescue.state.host))
            except CdpError as exc:
                self.show_error(exc)
        self.app.push_screen(AskDialog("Newest point at or before (YYYY-MM-DD HH:MM):",
                                       "2026-11-24 10:05"), go)

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_hosts(self) -> None:
        self.query_one("#hosts", DataTable).focus()

    @work(thread=True, exclusive=True, group="layout")
    def _show_layout(self, point_id: str) -> None:
        engine = self.rescue.state.engine
        if engine is None:
            return
        layout = self.layouts.get(point_id)
        if layout is None:
            try:
                layout = engine.repo.open_point(point_id).manifest.layout
            except Exception as exc:  # a damaged manifest is shown, not fatal
                self.app.call_from_thread(self.query_one("#layout", LayoutTree).show, None,
                                          f"cannot open: {exc}")
                return
            self.layouts[point_id] = layout
        self.app.call_from_thread(self.query_one("#layout", LayoutTree).show, layout)

    def _choose(self, point_id: str) -> None:
        state = self.rescue.state
        state.point = next(p for p in self.points if p.point_id == point_id)
        from .mapping import MapScreen
        self.app.push_screen(MapScreen())
