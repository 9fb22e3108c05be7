"""Review and confirm: every destructive step of the engine's plan, in order; nothing is
written until the operator types the target disk's name (or the host name)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Footer, Input, Static

from cdpcore.points import local_time
from cdpcore.units import human

from ...plan import Plan
from .base import RescueScreen


def confirm_words(plan: Plan) -> set[str]:
    """What may be typed to confirm: the host name, or with a single target disk its name
    or path (with several disks only the host name names them all)."""
    words = {plan.host}
    if len(plan.disks) == 1:
        words |= {plan.disks[0].target.name, plan.disks[0].target.path}
    return words


def describe(plan: Plan, reasons: dict[str, str] | None = None) -> str:
    """reasons: why each source's target, in the map screen's words (the plan says "--map"
    for every disk the screen passed on, automatic matches included)."""
    lines = [f"Restore host {plan.host}, point {plan.point_id[:12]} ({local_time(plan.created)})"]
    for dp in plan.disks:
        reason = (reasons or {}).get(dp.source) or dp.reason
        lines.append(f"  {dp.source} -> {dp.target.path} ({human(dp.target.size)}, "
                     f"{reason})")
        lines += [f"     now on it: {c}" for c in dp.target.contents]
    lines.append("Steps (destructive, in this order):")
    lines += [f"  {i:2}. {a.description}" for i, a in enumerate(plan.actions, 1)]
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


class ReviewScreen(RescueScreen):
    def __init__(self, plan: Plan, reasons: dict[str, str] | None = None) -> None:
        super().__init__()
        # Its own plan, not a shared one: a later planning (ctrl+n again, its thread not
        # stopped) must not change what confirming this screen starts.
        self.plan = plan
        self.reasons = reasons or {}

    def compose(self) -> ComposeResult:
        plan = self.plan
        yield Static("5/6 Review: everything on the target disks will be destroyed",
                     classes="title")
        with VerticalScroll(id="steps"):
            yield Static(describe(plan, self.reasons), id="plan-text")
        names = " or ".join(sorted(confirm_words(plan) - {plan.host})) or ""
        yield Static(f"Type {names + ' or ' if names else ''}the host name "
                     f"{plan.host!r} and press Enter to start:", classes="hint")
        yield Input(placeholder="confirmation", id="confirm")
        yield Static("", id="confirm-error", classes="error")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#confirm", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip() not in confirm_words(self.plan):
            self.query_one("#confirm-error", Static).update(
                f"{event.value.strip()!r} does not name the target: nothing was written")
            return
        from .restore import RestoreScreen
        self.app.push_screen(RestoreScreen(self.plan))
