"""A status line and the function that makes one: `describe` (one handler per Change type,
registered by observe/run_lines.py and observe/notice_lines.py) turns a change into a `Line`.
Import `describe` from observe/lines.py, which imports the handlers with it."""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec

from ghitwork.bus.changes import (
    Change,
    ConversationsQueued,
    Level,
)
from ghitwork.model.events import Event
from ghitwork.model.formatting import iso

LEVELS = {Level.DEBUG: 10, Level.INFO: 20, Level.WARNING: 30, Level.ERROR: 40}
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # all but the tab


def printable(text: str) -> str:
    """`text` with its control characters written `\\xNN`: whatever an agent printed (a NUL
    in a session id, a carriage return, a terminal's escape sequence), a status line stays
    one line of text that grep and a terminal take as it is (SPEC §6)."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


class Line(msgspec.Struct, frozen=True):
    level: Level
    event: str  # a stable name for log shippers: agent.state, run.start, source.retry, ...
    message: str
    fields: dict[str, Any] = msgspec.field(default_factory=dict)


def count_events(count: int) -> str:
    return f"{count} event" + ("" if count == 1 else "s")


def routed_line(event: Event, agents: tuple[str, ...]) -> Line:
    """The debug line of one event read from the stream."""
    who = ", ".join(agents) if agents else "no agent"
    by = f" by {event.actor}" if event.actor else ""
    return Line(
        Level.DEBUG,
        "event.routed",
        f"event {event.id} {event.kind}{by} in {' '.join(event.scopes)} -> {who}",
        {
            "event_id": event.id,
            "kind": event.kind,
            "actor": event.actor,
            "scopes": list(event.scopes),
            "agents": list(agents),
        },
    )


@functools.singledispatch
def only_info(change: Change) -> bool:
    """A change whose line is INFO for sure, told without building it: under --log-level
    warning a catch-up's thousands of run lines cost nothing."""
    return False


@functools.singledispatch
def describe(change: Change) -> Line | None:
    """The status line of a change (None: it has none): one handler per Change type."""
    return None


_last: tuple[Change | None, tuple[Line, ...]] = (None, ())


def lines_of(change: Change) -> tuple[Line, ...]:
    """The status lines of `change`: `describe(change)`, if it has one; one per conversation
    of a ConversationsQueued, as each one's AgentChanged would say. Made once when the status
    writer and the dashboard model ask for the same change in turn (every agent output line
    is one)."""
    global _last
    if _last[0] is not change:
        if isinstance(change, ConversationsQueued):
            found = tuple([line for each in change.each() if (line := describe(each))])
        else:
            line = describe(change)
            found = (line,) if line is not None else ()
        _last = (change, found)
    return _last[1]


timestamp = iso  # a status line's time: UTC, milliseconds, "Z"
