"""The asciimatics dashboard (`ghit-work --tui`): draws `DashboardModel.view()` snapshots.

One custom Effect draws everything from the snapshot, so the whole screen is one function of
(View, UiState, now) and is tested headless on a Canvas. The asciimatics Screen is driven from
the asyncio loop (`draw_next_frame` on a short timer), so the TUI needs no thread of its own.
Selection, focus, scroll and filter live in `UiState`, which survives the screen being reopened
on resize.
"""

from __future__ import annotations

import asyncio
import contextlib
import curses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
from asciimatics.effects import Effect
from asciimatics.event import KeyboardEvent
from asciimatics.scene import Scene
from asciimatics.screen import Screen

from ghitwork.observe.dashboard import DashboardModel, View
from ghitwork.tui.panes import PANES, UiState, render, selected

TICK = 0.05  # seconds between input polls


class Controls(msgspec.Struct):
    quit: Callable[[], None]
    terminate: Callable[[str], int | None]  # SIGTERM the agent's run; its pid, or None
    reload: Callable[[], None]
    redeliver: Callable[[str], int] = lambda name: 0  # the agent's dead letters handed back
    # pause the agent, or resume it when it is paused: whether it is paused now (SPEC §13)
    pause: Callable[[str], bool] = lambda name: False


def handle_key(
    key: int, ui: UiState, view: View, model: DashboardModel, controls: Controls, page: int = 10
) -> bool:
    """Apply one key press; False when the key means nothing here."""
    if ui.editing:
        if key in (10, 13):
            ui.editing = False
        elif key == Screen.KEY_ESCAPE:
            ui.filter, ui.editing = "", False
        elif key in (Screen.KEY_BACK, 127, 8):
            ui.filter = ui.filter[:-1]
        elif 32 <= key < 0x110000:
            ui.filter += chr(key)
            ui.scroll["events"] = 0
        else:
            return False
        return True
    agents = view.agents
    if key in (ord("q"), ord("Q"), 3):
        controls.quit()
    elif key in (Screen.KEY_TAB, 9):
        ui.focus = (ui.focus + 1) % len(PANES)
    elif key == Screen.KEY_BACK_TAB:
        ui.focus = (ui.focus - 1) % len(PANES)
    elif key == Screen.KEY_LEFT and agents:
        ui.selected = (ui.selected - 1) % len(agents)
    elif key == Screen.KEY_RIGHT and agents:
        ui.selected = (ui.selected + 1) % len(agents)
    elif key in (Screen.KEY_UP, Screen.KEY_PAGE_UP):
        ui.scroll[ui.pane] += 1 if key == Screen.KEY_UP else page
    elif key in (Screen.KEY_DOWN, Screen.KEY_PAGE_DOWN):
        ui.scroll[ui.pane] = max(0, ui.scroll[ui.pane] - (1 if key == Screen.KEY_DOWN else page))
    elif key == Screen.KEY_END:
        ui.scroll[ui.pane] = 0
    elif key in (10, 13):
        ui.expanded = not ui.expanded
    elif key == ord("/"):
        ui.editing, ui.filter = True, ""
    elif key == Screen.KEY_ESCAPE:
        if ui.filter:
            ui.filter = ""
        else:
            ui.expanded = False
    elif key == ord("k"):
        agent = selected(ui, view)
        if agent is None or not agent.working:
            name = agent.name if agent else "no agent"
            model.note(f"k: {name} is not working; nothing to stop")
        else:
            pid = controls.terminate(agent.name)
            model.note(
                f"k: SIGTERM sent to agent {agent.name}"
                + (f" (pid {pid})" if pid else "")
                + "; SIGKILL follows in 5s"
            )
    elif key == ord("R"):
        agent = selected(ui, view)
        if agent is None or not agent.dead_letters:
            model.note(f"R: {agent.name if agent else 'no agent'} has no dead letters")
        else:
            count = controls.redeliver(agent.name)
            model.note(f"R: {count} dead letter(s) of {agent.name} handed back")
    elif key == ord("p"):
        agent = selected(ui, view)
        if agent is None:
            model.note("p: no agent")
        elif controls.pause(agent.name):
            model.note(f"p: {agent.name} paused: no run starts, its events keep queueing")
        else:
            model.note(f"p: {agent.name} resumed")
    elif key == ord("r"):
        model.note("r: reloading the config (SIGHUP)")
        controls.reload()
    else:
        return False
    return True


class DashboardEffect(Effect):  # type: ignore[misc]
    """The whole dashboard as one Effect: draws the latest snapshot, handles the keys."""

    def __init__(
        self,
        screen: Any,
        model: DashboardModel,
        ui: UiState,
        controls: Controls,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(screen)
        self.model = model
        self.ui = ui
        self.controls = controls
        self.clock = clock

    def reset(self) -> None:
        pass

    @property
    def stop_frame(self) -> int:
        return 0

    @property
    def frame_update_count(self) -> int:
        # Redraw by itself once a second (clocks, countdowns); changes force a redraw sooner.
        return int(1 / TICK)

    def _update(self, frame_no: int) -> None:
        render(self._screen, self.model.view(), self.ui, self.clock())

    def process_event(self, event: Any) -> Any:
        if isinstance(event, KeyboardEvent):
            page = max(1, self._screen.height - 6)
            if handle_key(
                event.key_code, self.ui, self.model.view(), self.model, self.controls, page
            ):
                return None
        return event


async def run_dashboard(model: DashboardModel, controls: Controls) -> None:
    """Own the terminal until cancelled; redraw when the model changes, poll keys often."""
    os.environ.setdefault("ESCDELAY", "25")  # or Esc lags a second
    # curses prefers LINES/COLUMNS over the terminal's real size, and they go stale on a
    # resize. (Agents keep them: their environment was copied at start.)
    os.environ.pop("LINES", None)
    os.environ.pop("COLUMNS", None)
    ui = UiState()
    screen = _open(model, ui, controls)
    try:
        seen = -1
        while True:
            if screen.has_resized():
                screen.close(restore=False)
                screen = _open(model, ui, controls, resized=True)
                seen = -1
            if model.version != seen:
                seen = model.version
                screen.force_update()
            screen.draw_next_frame()
            await asyncio.sleep(TICK)
    finally:
        with contextlib.suppress(Exception):
            screen.close()


def _open(model: DashboardModel, ui: UiState, controls: Controls, resized: bool = False) -> Any:
    if resized:
        # curses.initscr() returns the existing window unchanged once curses is set up, so
        # tell curses the new size before asciimatics asks for it.
        with contextlib.suppress(OSError, curses.error):
            size = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1)
            curses.resizeterm(size.lines, size.columns)
    screen = Screen.open()
    screen.set_scenes([Scene([DashboardEffect(screen, model, ui, controls)], -1)])
    return screen
