"""Restore: the engine executes the plan in a worker thread; its events drive one progress
line per volume and one overall (rate and ETA) and a live log. On failure: what failed
and what can be done (resume, another point, shell); at the end a summary and the choice
of reboot, power off or shell."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Footer, RichLog, Static

from cdpcore.errors import CdpError
from cdpcore.units import human

from ...engine import Event, ExecuteOptions
from ...plan import Plan
from ...report import RestoreReport
from ..widgets.progress import ProgressLine
from .base import RescueScreen

#: Action types whose bytes count for the overall progress.
_COUNTED = ("stream", "verify")
PROGRESS_INTERVAL = 0.1  # seconds


class Stopped(CdpError):
    """The operator quit while the restore ran: the engine stops at its next event."""


class RestoreScreen(RescueScreen):

    class Shown(Message):
        """An engine event or the outcome, queued for the screen from the restore thread:
        queueing never waits for the UI, which a shell (F2) suspends while it is open."""

        def __init__(self, show: Callable[[], None]) -> None:
            super().__init__()
            self.show = show

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan  # the one its review screen showed
        self.running = False
        self.outcome: str = ""  # "", "done", "failed"
        self.report: RestoreReport | None = None
        self.finished: dict[str, int] = {}  # action id -> bytes counted
        self.stop_requested = False  # set by a confirmed quit (the app is going away)

    def compose(self) -> ComposeResult:
        yield Static("6/6 Restore", classes="title")
        with VerticalScroll(id="bars"):
            for action in self.plan.actions:
                if action.type in _COUNTED:
                    yield ProgressLine(("" if action.type == "stream" else "check ")
                                       + str(action.volume), action.size,
                                       id=_bar_id(action.id))
            yield ProgressLine("overall", self.total, id="overall")
        yield Static("", id="outcome", classes="error")
        with Horizontal(classes="buttons", id="choices"):
            pass
        yield RichLog(id="log", wrap=True, max_lines=2000)
        yield Footer()

    @property
    def total(self) -> int:
        return sum(a.size for a in self.plan.actions if a.type in _COUNTED) or 1

    def on_mount(self) -> None:
        self.start()

    def start(self) -> None:
        self.running, self.outcome, self.finished = True, "", {}
        self.query_one("#outcome", Static).update("restoring ...")
        self.query_one("#choices", Horizontal).remove_children()
        self._execute(self.plan)

    def action_back(self) -> None:
        if not self.running and self.outcome != "done":
            self.app.pop_screen()

    def stop(self) -> None:
        """Stop the engine at its next event; its report and resume state are kept."""
        self.stop_requested = True

    def log_line(self, text: str) -> None:
        self.query_one("#log", RichLog).write(text)

    @work(thread=True, exclusive=True)
    def _execute(self, plan: Plan) -> None:
        state, settings = self.rescue.state, self.rescue.settings
        assert state.engine is not None
        opts = ExecuteOptions(state_dir=settings.state_dir)
        last = 0.0

        def post(ev: Event) -> None:
            # Queued, not waited for: the restore goes on while the UI is suspended; and
            # progress is shown ten times a second at most, so the queue stays short.
            nonlocal last
            if self.stop_requested:  # raised inside the engine: it stops as on an error
                raise Stopped("stopped by the operator (quit)")
            now = time.monotonic()
            if ev.kind == "progress" and now - last < PROGRESS_INTERVAL and ev.done < ev.total:
                return
            last = now
            self.post_message(self.Shown(partial(self.show_event, ev)))

        # The outcome goes through the same queue: after the events that came before it.
        try:
            report = state.engine.execute(plan, opts, post)
        except Exception as exc:  # every failure is shown with what can be done next
            if not self.stop_requested:  # after a quit there is no screen to show it on
                self.post_message(self.Shown(partial(self._failed, exc)))
            return
        if not self.stop_requested:
            self.post_message(self.Shown(partial(self._done, report)))

    def on_restore_screen_shown(self, message: Shown) -> None:
        message.show()

    def show_event(self, ev: Event) -> None:
        action = ev.action
        if ev.kind in ("start", "failed", "note", "skip"):
            self.log_line(f"{ev.kind}: {ev.message}")
        if action is None or action.type not in _COUNTED:
            if ev.kind == "done" and action is not None:
                self.log_line(f"done: {action.description}")
            return
        bar = self.query_one(f"#{_bar_id(action.id)}", ProgressLine)
        if ev.kind == "start":
            bar.begin()
        if ev.kind in ("progress", "done"):
            bar.set_done(ev.done)
            self.finished[action.id] = ev.done
        if ev.kind == "skip":
            bar.set_done(action.size)
            self.finished[action.id] = action.size
        if ev.kind == "done":
            bar.set_status("done")
            self.log_line(f"done: {action.description}")
        if ev.kind == "failed":
            bar.set_status("FAILED")
        self.query_one("#overall", ProgressLine).set_done(sum(self.finished.values()))

    def _choices(self, *buttons: tuple[str, str]) -> None:
        box = self.query_one("#choices", Horizontal)
        box.mount_all([Button(label, id=ident) for ident, label in buttons])
        box.query(Button).first().focus()

    def _failed(self, exc: BaseException) -> None:
        from ..session import explain
        self.running, self.outcome = False, "failed"
        title, text = explain(exc)
        self.log_line(f"FAILED: {title}: {text}")
        self.query_one("#outcome", Static).update(
            f"Restore failed: {text}\nResume continues where it stopped (finished volumes "
            "are kept); or choose another point; or open a shell.")
        self._choices(("resume", "Resume"), ("another", "Another point"), ("shell", "Shell"))

    def _done(self, report: RestoreReport) -> None:
        self.running, self.outcome, self.report = False, "done", report
        took = max(report.finished - report.started, 1e-6)
        self.query_one("#overall", ProgressLine).set_done(self.total)
        summary = (f"Restored {human(report.bytes_restored)} of host {report.host} in "
                   f"{took:.1f} s ({human(int(report.bytes_restored / took))}/s), "
                   f"{len(report.volumes)} volumes"
                   + "".join(f"\nnote: {n}" for n in report.notes))
        self.log_line(summary)
        self.query_one("#outcome", Static).update(summary)
        self._choices(("reboot", "Reboot"), ("poweroff", "Power off"), ("shell", "Shell"))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        ident = event.button.id
        if ident == "resume":
            self.start()
        elif ident == "another":
            from .points import PointsScreen
            while not isinstance(self.app.screen, PointsScreen):
                self.app.pop_screen()
        elif ident == "shell":
            self.rescue.action_shell()
        elif ident in ("reboot", "poweroff"):
            self.log_line(f"{ident} ...")
            try:
                self.rescue.settings.power(ident)
            except CdpError as exc:  # e.g. no reboot tool: say so, the shell is still there
                self.show_error(exc)


def _bar_id(action_id: str) -> str:
    return "bar-" + "".join(c if c.isalnum() else "-" for c in action_id)
