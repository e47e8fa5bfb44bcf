"""How a stop ends, whatever state the pipeline is in (SPEC §5, §11): the agents terminated
and waited for at most STOP_BOUND, the last snapshot saved (and said only once it is on
disk), and a watchdog that ends the process if the loop itself is stuck."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ghitwork.bus.changes import Change, Level, StateBus
from ghitwork.flow.dispatch import Dispatcher
from ghitwork.model.formatting import iso
from ghitwork.persist.saved import Saved
from ghitwork.persist.store import StateDirError, Store
from ghitwork.system.children import Children
from ghitwork.system.groups import KILL_GRACE

# A stop ends within the agents' grace time plus this (SPEC §11): the agents get SIGTERM, then
# SIGKILL after KILL_GRACE; whatever still has not ended by then is not waited for.
STOP_SLACK = 5.0
STOP_BOUND = KILL_GRACE + STOP_SLACK


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    SOURCE_GAVE_UP = 3
    FATAL = 4  # a stage that cannot be contained failed (SPEC §11)


async def stop_agents(dispatcher: Dispatcher, bus: StateBus, broken: bool) -> None:
    """SIGTERM the running agents, SIGKILL after the grace time; wait for them at most
    STOP_BOUND. A `broken` pipeline may never report a run ended: its process is enough."""
    running = dispatcher.running_names()
    if running:
        bus.notice(
            Level.INFO,
            "stop",
            f"stopping: terminating {', '.join(running)} (SIGTERM, then SIGKILL)",
        )
    stopped = asyncio.ensure_future(dispatcher.stop())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_BOUND - 1.0
    while not stopped.done():
        left = deadline - loop.time()
        if left <= 0 or (broken and not dispatcher.running):
            break
        await asyncio.wait([stopped], timeout=min(left, 0.05) if broken else left)
    if stopped.done():
        return
    stopped.cancel()
    if broken and not dispatcher.running:
        return
    names = ", ".join(dispatcher.running_names()) or "none running"
    bus.notice(
        Level.ERROR,
        "stop",
        f"agents not reported ended {STOP_BOUND - 1.0:g}s after SIGTERM ({names}); "
        "their events are saved as not delivered, and the stop goes on",
    )


def save(store: Store, saved: Saved, waiting: int, bus: StateBus) -> bool:
    """The last snapshot, at the stop: said only once it is on disk. When it cannot be
    written, the journal (a smaller write) may still take what it lacks: then nothing is
    lost. False when some of it could not be written at all (the stop then exits 1)."""
    try:
        store.compact(saved)
    except (OSError, StateDirError) as error:
        with contextlib.suppress(OSError, StateDirError):
            store.flush()
        unwritten = store.unwritten
        if unwritten == 0:
            outcome = (
                "the journal holds every change, so nothing is lost: the "
                f"{waiting} undelivered event(s) are delivered at the next start"
            )
        else:
            outcome = (
                f"{unwritten} journal record(s) could not be written either: events after "
                "the cursor on disk are read again from tail-events, and runs not recorded "
                "as done are delivered again (at least once, never lost)"
            )
        bus.notice(
            Level.ERROR,
            "stop",
            f"could not save the state: {cannot_write(store.dir, error)}; {outcome}",
        )
        return unwritten == 0
    if waiting:
        bus.notice(
            Level.INFO,
            "stop",
            f"saved {waiting} undelivered event(s) in {store.dir}; "
            "they are delivered first at the next start",
        )
    return True


class Watchdog:
    """Started with the stop: if the process has not exited STOP_BOUND later, the loop is
    stuck; on its own thread, it SIGKILLs the process groups this instance recorded and
    exits with `code()`."""

    def __init__(
        self, children: Children, state_dir: Path, code: Callable[[], Exit], json: bool = False
    ) -> None:
        self.json = json  # --log-format json: its one line is a JSON object too
        self.children = children
        self.state_dir = state_dir
        self.code = code
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(STOP_BOUND, self._overdue)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _overdue(self) -> None:
        ended = 0
        for pgid in list(self.children.live):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
                ended += 1
        code = self.code()
        error_line(
            f"the stop did not end within {STOP_BOUND:g}s; exiting with status {int(code)} "
            f"({ended} process group(s) killed); the journal in {self.state_dir} keeps what "
            "was written",
            self.json,
        )
        os._exit(int(code))


def cannot_write(state_dir: Path, error: BaseException) -> str:
    if isinstance(error, StateDirError):
        return str(error)  # it names the state_dir and the file
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"cannot write {state_dir}: {reason or type(error).__name__}"


def drained(dispatcher: Dispatcher, bus: StateBus) -> Exit:
    """--drain, once every batch could run: 0 when every enabled agent was given its events
    (dead letters included), 1 when some could not be (they stay saved)."""
    left = {
        name: events
        for name, events in dispatcher.pending_events().items()
        if dispatcher.agents[name].config.enabled
    }
    if left:
        who = ", ".join(f"{name} ({len(events)} events)" for name, events in left.items())
        agents = "1 agent" if len(left) == 1 else f"{len(left)} agents"
        bus.notice(
            Level.ERROR,
            "drain",
            f"{agents} could not be given {'its' if len(left) == 1 else 'their'}"
            f" events: {who}; they stay saved in state_dir",
        )
        return Exit.FAILURE
    message = "every batch delivered; exiting"
    if dispatcher.dead_letters:
        count = len(dispatcher.dead_letters)
        message += (
            f" ({count} dead letter{'s' if count != 1 else ''} in state_dir: "
            "ghit-work dead-letters lists them)"
        )
    bus.notice(Level.INFO, "drain", message)
    return Exit.OK


def say_fatal(bus: StateBus, stage: str, error: BaseException, json: bool = False) -> None:
    """The one ERROR line of a stage that cannot be contained (SPEC §11); said on stderr
    directly when the state bus itself is what failed."""
    detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    message = (
        f"{stage} failed ({detail}); it cannot be contained, so ghit-work stops: agents "
        "terminated, undelivered events saved, exit status 4 for the supervisor to restart it"
    )
    try:
        bus.notice(Level.ERROR, "fatal", message)
    except Exception:  # the bus itself is what failed: the line must still be said
        error_line(message, json)


def guarded(
    stage: str,
    observer: Callable[[Change], None],
    fatal: Callable[[str, BaseException], None],
    failed: Callable[[], str | None],
) -> Callable[[Change], None]:
    """A subscriber of the state bus whose failure is fatal under its own name; once failed,
    it takes nothing more (its state is not to be trusted)."""

    def guard(change: Change) -> None:
        if failed() == stage:
            return
        try:
            observer(change)
        except Exception as error:
            fatal(stage, error)

    return guard


def error_line(message: str, as_json: bool, stream: TextIO | None = None) -> None:
    """One `ghit-work: error: …` line on stderr, written without the state bus (the bus
    failed, the loop is stuck, or the command never started one); with --log-format json it
    is a JSON object like every status line."""
    text = f"ghit-work: error: {message}"
    if as_json:
        text = json.dumps(
            {"time": iso(time.time()), "level": "error", "event": "error", "message": text},
            ensure_ascii=False,
        )
    print(text, file=stream or sys.stderr, flush=True)
