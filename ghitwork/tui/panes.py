"""Drawing the dashboard: the whole screen as one function of (View, UiState, now).

Tested headless on an asciimatics Canvas; ui.py owns the terminal, the keys and the timer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from asciimatics.screen import Screen

from ghitwork.bus.changes import AgentState
from ghitwork.model.durations import format_duration
from ghitwork.observe.dashboard import AgentView, EventLine, View
from ghitwork.tui.details import attempt_text, details

PANES = ("attention", "events", "log")

STACKED_HEIGHT = 34  # from this height on, the three panes are shown at once
FOOTER = (
    "q quit  Tab pane  ←/→ agent  ↑/↓ scroll  Enter details  / filter  Esc clear  "
    "k stop agent  R redeliver  r reload  p pause"
)

STATE_COLOURS = {
    "idle": Screen.COLOUR_WHITE,
    "queued": Screen.COLOUR_YELLOW,
    "working": Screen.COLOUR_GREEN,
    "retrying": Screen.COLOUR_YELLOW,
    "rate-limited": Screen.COLOUR_MAGENTA,
    "throttled": Screen.COLOUR_MAGENTA,
    "failing": Screen.COLOUR_RED,
    "disabled": Screen.COLOUR_BLUE,
}
HEALTH_COLOURS = {
    "healthy": Screen.COLOUR_GREEN,
    "retrying": Screen.COLOUR_YELLOW,
    "failing": Screen.COLOUR_RED,
    "starting": Screen.COLOUR_WHITE,
}


class UiState(msgspec.Struct):
    selected: int = 0
    focus: int = 0
    scroll: dict[str, int] = msgspec.field(default_factory=lambda: dict.fromkeys(PANES, 0))
    filter: str = ""
    editing: bool = False
    expanded: bool = False

    @property
    def pane(self) -> str:
        return PANES[self.focus]


def selected(ui: UiState, view: View) -> AgentView | None:
    if not view.agents:
        return None
    ui.selected = min(ui.selected, len(view.agents) - 1)
    return view.agents[ui.selected]


class _Painter:
    """print_at with clipping and padding to the canvas width."""

    def __init__(self, canvas: Any) -> None:
        self.canvas = canvas
        self.width: int = canvas.width
        self.height: int = canvas.height

    def line(
        self,
        y: int,
        text: str,
        colour: int = Screen.COLOUR_WHITE,
        attr: int = 0,
        bg: int = Screen.COLOUR_BLACK,
        x: int = 0,
    ) -> int:
        if y < 0 or y >= self.height or x >= self.width:
            return x
        text = text[: self.width - x]
        self.canvas.print_at(text, x, y, colour, attr, bg)
        return x + len(text)

    def fill(
        self,
        y: int,
        text: str = "",
        colour: int = Screen.COLOUR_WHITE,
        attr: int = 0,
        bg: int = Screen.COLOUR_BLACK,
    ) -> None:
        self.line(y, text.ljust(self.width), colour, attr, bg)


def render(canvas: Any, view: View, ui: UiState, now: float) -> None:
    """Draw the whole dashboard for this snapshot."""
    paint = _Painter(canvas)
    for y in range(paint.height):
        paint.fill(y)
    _header(paint, view, now)
    _strip(paint, view, ui, now)
    body_top, body_bottom = 3, paint.height - 2
    if ui.expanded and selected(ui, view) is not None:
        _tabs(paint, 2, view, ui, expanded=True)
        agent = selected(ui, view)
        assert agent is not None
        room = body_bottom - body_top + 1
        _lines(paint, body_top, body_bottom, details(agent, now, room), 0)
    elif paint.height >= STACKED_HEIGHT:
        _tabs(paint, 2, view, ui, expanded=False)
        heights = _split(body_bottom - body_top + 1, (1, 2, 2))
        y = body_top
        for pane, height in zip(PANES, heights, strict=True):
            focused = pane == ui.pane
            title = f"── {_pane_title(pane, view, ui)} "
            paint.fill(
                y,
                title.ljust(paint.width, "─"),
                Screen.COLOUR_CYAN,
                Screen.A_BOLD if focused else 0,
            )
            _pane(paint, pane, y + 1, y + height - 1, view, ui)
            y += height
    else:
        _tabs(paint, 2, view, ui, expanded=False)
        _pane(paint, ui.pane, body_top, body_bottom, view, ui)
    _footer(paint, ui)


def _split(total: int, weights: Sequence[int]) -> list[int]:
    sizes = [max(3, total * w // sum(weights)) for w in weights]
    sizes[-1] = max(3, total - sum(sizes[:-1]))
    return sizes


def _header(paint: _Painter, view: View, now: float) -> None:
    x = paint.line(0, " ghit-work ", Screen.COLOUR_BLACK, Screen.A_BOLD, Screen.COLOUR_CYAN)
    limit = "none" if view.limit == 0 else str(view.limit)
    x = paint.line(
        0, f" {view.config_path}  limit {limit}  retry {format_duration(view.retry)}  ", x=x
    )
    health = view.health
    if health == "retrying" and view.retry_at is not None:
        left = max(0.0, view.retry_at - now)
        health += (
            f" (next try in {format_duration(left)}, "
            f"{format_duration(view.retry_used)} of {format_duration(view.retry)} used)"
        )
    x = paint.line(
        0, health, HEALTH_COLOURS.get(view.health, Screen.COLOUR_WHITE), Screen.A_BOLD, x=x
    )
    paint.line(
        0,
        f"  ${view.cost_today:.2f} today  events {view.events_seen}  batches {view.batches_run}"
        f"  failures {view.failures}",
        x=x,
    )


def _cell(agent: AgentView, now: float) -> str:
    word = agent.shown_state
    if agent.state is AgentState.PAUSED and agent.working:
        word += " (run finishing)"
    if agent.state is AgentState.WORKING:
        word += f" {format_duration(max(0.0, now - agent.since))}"
        if agent.attempt > 1:
            word += f" #{attempt_text(agent)}"
    elif agent.due is not None and agent.state in (
        AgentState.RETRYING,
        AgentState.RATE_LIMITED,
    ):
        word += f" {attempt_text(agent)} in {format_duration(max(0.0, agent.due - now))}"
    if agent.queue and agent.state is not AgentState.DISABLED:
        word += f" +{agent.queue}"  # waiting for its next batch, whatever it does now
    if agent.dead_letters:
        word += f" ✝{len(agent.dead_letters)}"
    return f" {agent.name} {word} "


def _strip(paint: _Painter, view: View, ui: UiState, now: float) -> None:
    if not view.agents:
        paint.line(1, " no agents")
        return
    current = selected(ui, view)
    cells = [_cell(agent, now) for agent in view.agents]
    # Scroll the strip so that the selected cell is visible.
    start = 0
    while (
        sum(len(c) + 1 for c in cells[start : ui.selected + 1]) > paint.width
        and start < ui.selected
    ):
        start += 1
    x = 0
    for agent, cell in zip(view.agents[start:], cells[start:], strict=True):
        colour = STATE_COLOURS.get(agent.shown_state, Screen.COLOUR_WHITE)
        attr = Screen.A_REVERSE if agent is current else Screen.A_BOLD
        x = paint.line(1, cell, colour, attr, x=x) + 1
        if x >= paint.width:
            break


def _pane_title(pane: str, view: View, ui: UiState) -> str:
    if pane == "attention":
        return f"Attention ({len(view.attention)})"
    if pane == "events":
        return f"Events [filter: {ui.filter}]" if ui.filter else "Events"
    return "Log"


def _tabs(paint: _Painter, y: int, view: View, ui: UiState, expanded: bool) -> None:
    x = 0
    for index, pane in enumerate(PANES):
        focused = index == ui.focus and not expanded
        x = paint.line(
            y,
            f" {_pane_title(pane, view, ui)} ",
            Screen.COLOUR_CYAN,
            Screen.A_REVERSE if focused else 0,
            x=x,
        )
        x = paint.line(y, "│", Screen.COLOUR_CYAN, x=x)
    if expanded:
        agent = selected(ui, view)
        paint.line(
            y,
            f" Agent {agent.name if agent else ''} (Esc to leave) ",
            Screen.COLOUR_CYAN,
            Screen.A_REVERSE,
            x=x,
        )


def pane_lines(pane: str, view: View, ui: UiState) -> list[str]:
    if pane == "attention":
        return list(view.attention)
    if pane == "log":
        return list(view.log)
    events: Sequence[EventLine] = view.events
    if ui.filter:
        events = [e for e in events if e.matches(ui.filter)]
    return [_event_text(e) for e in events]


def _event_text(event: EventLine) -> str:
    scope = event.scopes[0] if event.scopes else "-"
    title = f" “{event.title}”" if event.title else ""
    to = ", ".join(event.agents) if event.agents else "no agent"
    return f"{event.id:>7} {event.kind:<20} {event.actor:<10} -> {to:<14} {scope}{title}"


def _pane(paint: _Painter, pane: str, top: int, bottom: int, view: View, ui: UiState) -> None:
    colour = Screen.COLOUR_YELLOW if pane == "attention" else Screen.COLOUR_WHITE
    lines = pane_lines(pane, view, ui)
    if not lines:
        empty = {
            "attention": "nothing needs you",
            "events": "no events yet",
            "log": "no status lines yet",
        }[pane]
        if pane == "events" and ui.filter:
            empty = f"no event matches “{ui.filter}”"
        paint.line(top, f"  ({empty})", Screen.COLOUR_BLUE)
        return
    _lines(paint, top, bottom, lines, ui.scroll[pane], colour)


def _lines(
    paint: _Painter,
    top: int,
    bottom: int,
    lines: Sequence[str],
    scroll: int,
    colour: int = Screen.COLOUR_WHITE,
) -> None:
    height = bottom - top + 1
    if height <= 0:
        return
    scroll = min(scroll, max(0, len(lines) - height))
    if scroll:
        height -= 1  # the last row says how much is below
        paint.line(bottom, f" ↓ {scroll} newer ", Screen.COLOUR_BLACK, 0, Screen.COLOUR_YELLOW)
    end = len(lines) - scroll
    for offset, text in enumerate(lines[max(0, end - height) : end]):
        paint.line(top + offset, text, colour)


def _footer(paint: _Painter, ui: UiState) -> None:
    y = paint.height - 1
    if ui.editing:
        x = paint.line(y, " filter: ", Screen.COLOUR_BLACK, 0, Screen.COLOUR_YELLOW)
        x = paint.line(y, ui.filter + "_", x=x)
        paint.line(y, "  (Enter keeps it, Esc clears it)", Screen.COLOUR_BLUE, x=x)
        return
    paint.fill(y, " " + FOOTER, Screen.COLOUR_BLACK, 0, Screen.COLOUR_CYAN)
