"""An agent's queued events as a state dir is read back: one per id, in id order.

A snapshot lists them and the journal after it adds and removes them by id. A dict keyed by
id did that with a table of ~30 bytes an event, ~3 MB for 100,000 queued events, held at a
restart's peak next to everything else it loads (the running instance holds plain lists).
This holds a list (8 bytes an event) and the removals since it was last settled.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ghitwork.model.events import Event

SavedEvent = dict[str, Any] | Event  # an event as loaded (a record of an older file: its dict)


def ident(event: SavedEvent) -> int:
    return event.id if isinstance(event, Event) else int(event["id"])


class Pending(Mapping[int, SavedEvent]):
    """Adds (`add`) and removals (`discard`) by id, in the order the journal holds them, as
    a dict would take them: an event added again after its removal is queued again; added
    twice, it is queued once, as last added. Reading it settles the list (sorted by id)."""

    __slots__ = ("_events", "_gone", "_last", "_settled")

    def __init__(self, events: Iterable[SavedEvent] = ()) -> None:
        self._events: list[SavedEvent] = list(events)
        # id -> how many entries there were when it was removed: those before are gone
        self._gone: dict[int, int] = {}
        self._settled = not self._events
        self._last: int | None = -1  # the last id added, while each came in id order

    @classmethod
    def ordered(cls, events: list[SavedEvent]) -> Pending:
        """Events already in id order, one per id (what the flow holds): taken as they are."""
        pending = cls()
        if events:
            pending._events, pending._last = events, ident(events[-1])
        return pending

    def add(self, event: SavedEvent) -> None:
        """An event, queued: in id order (a journal's), the list stays settled."""
        last, event_id = self._last, ident(event)
        self._events.append(event)
        if self._settled and last is not None and event_id > last and not self._gone:
            self._last = event_id
        else:
            self._settled, self._last = False, None

    def discard(self, event_id: int) -> None:
        if self._events:
            self._gone[event_id] = len(self._events)
            self._settled = False
            # a journal of many runs removes most of what it adds: keep that bounded
            if len(self._gone) > 64 and len(self._gone) * 2 > len(self._events):
                self._settle()

    def clear(self) -> None:
        self._events, self._gone, self._settled, self._last = [], {}, True, -1

    def events(self) -> list[SavedEvent]:
        """The queued events in id order (the list itself: not to be changed)."""
        self._settle()
        return self._events

    def _settle(self) -> None:
        if self._settled:
            return
        events, gone = self._events, self._gone
        if gone:
            events = [e for n, e in enumerate(events) if n >= gone.get(ident(e), 0)]
        events.sort(key=ident)  # stable: of one id, the last added is the last
        if any(ident(a) == ident(b) for a, b in itertools.pairwise(events)):
            last = {ident(e): n for n, e in enumerate(events)}
            events = [e for n, e in enumerate(events) if last[ident(e)] == n]
        self._events, self._gone, self._settled = events, {}, True
        self._last = ident(events[-1]) if events else -1

    def __getitem__(self, event_id: int) -> SavedEvent:
        events = self.events()
        at = bisect.bisect_left(events, event_id, key=ident)
        if at == len(events) or ident(events[at]) != event_id:
            raise KeyError(event_id)
        return events[at]

    def __iter__(self) -> Iterator[int]:
        return (ident(e) for e in self.events())

    def __len__(self) -> int:
        return len(self.events())

    def __repr__(self) -> str:
        return f"Pending({self.events()!r})"
