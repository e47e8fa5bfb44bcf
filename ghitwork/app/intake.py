"""What goes into the pipeline: tail-events' reads, saved events, dead letters handed back.

What tail-events reads goes into the pipeline: each read is routed (runs may start; the
journal is written before any run takes an event), then journaled with its cursor, and only
then does the cursor saved and shown move. It never passes an event read but not routed
(SPEC §11): that one is read again at the next start. Routing or the journal failing is
fatal (`fail(stage, error)`), and nothing more is routed."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from reactivex.subject import Subject

from ghitwork.bus.changes import Level, StateBus
from ghitwork.flow.dispatch import Dispatcher
from ghitwork.flow.routing import Burst, Pair, Slots
from ghitwork.persist import requests
from ghitwork.persist.journal import Journal

RESTORED_AT_ONCE = 500  # saved conversations queued between two turns of the loop


class Intake:
    def __init__(
        self,
        journal: Journal,
        slots: Slots,
        fail: Callable[[str, BaseException], None],
        failed: Callable[[], bool],
    ) -> None:
        self.events: Subject[Burst] = Subject()  # tail-events' reads
        # (agent, events) pairs that skip matching: saved events, dead letters handed back
        self.injected: Subject[Pair] = Subject()
        self.journal = journal
        self.slots = slots
        self.fail = fail
        # A stage failed (fatal, `fail` included): nothing more is routed.
        self.failed = failed
        self.routed: int | None = None  # the last event routed and journaled
        self.backlog = False  # the last read from tail-events left more waiting

    async def restore(self, pairs: list[Pair]) -> None:
        """The saved events (flow/durable.py's pairs), delivered first: the loop turns every
        RESTORED_AT_ONCE conversations, so the first runs start while the rest is queued.
        `pairs` is emptied as it goes: an agent's events, once in their conversations, are
        not held a second time (100,000 saved events: 0.7 MB at a restart's peak)."""
        pairs.reverse()
        queued = 0
        while pairs:
            name, parts = pairs.pop()
            for start in range(0, len(parts), RESTORED_AT_ONCE):
                chunk = parts[start : start + RESTORED_AT_ONCE]
                self.injected.on_next((name, chunk))
                queued += len(chunk)
                if queued >= RESTORED_AT_ONCE:
                    queued = 0
                    await asyncio.sleep(0)

    def behind(self, more: bool) -> None:
        """After each read from tail-events: whether more is already waiting (a catch-up)."""
        self.backlog = more
        self.slots.backlog(more)

    def emit(self, burst: Burst, cursor: int | None) -> None:
        """One read from tail-events, `cursor` the id of its last event."""
        if self.failed():
            return  # fatal: nothing more is routed, and the cursor stays before it
        try:
            self.events.on_next(burst)
        except Exception as error:
            self.fail("routing", error)
            return
        if self.failed():  # a stage failed while routing (the state bus, the journal)
            return
        try:
            self.journal.read_up_to(cursor)
        except Exception as error:
            self.fail("journal", error)
            return
        self.routed = cursor

    def redeliver(self, dispatcher: Dispatcher, ids: Sequence[int], by: str) -> int:
        """Hand dead letters back to their agents (ids no longer dead letters are skipped);
        returns how many were."""
        count, pairs = dispatcher.redeliver(ids, by)
        for pair in pairs:
            if not self.injected.is_stopped:
                self.injected.on_next(pair)  # gives the agent a group
            else:  # the flow is draining: kept queued, saved at the stop
                agent = dispatcher.agent(pair[0])
                for conversation, events in pair[1]:
                    agent.conversation(conversation).merge(events)
        return count

    def take_requests(
        self,
        state_dir: Path,
        dispatcher: Dispatcher,
        bus: StateBus,
        names: list[str] | None = None,
    ) -> None:
        """Redelivery requests `ghit-work redeliver` left in state_dir (persist/requests.py),
        each removed only once the journal has its redelivery. `names`: the requests
        folder's listing, when already made."""
        unreadable = functools.partial(bus.notice, Level.WARNING, "redeliver")
        for request in requests.pending_requests(state_dir, unreadable, names):
            self.redeliver(dispatcher, request.ids, "ghit-work redeliver")
            requests.consumed(request)
