"""The durable side of the state bus: every change that matters is written to the journal.

A subscriber of the state bus, like the status lines and the TUI. Events are journaled (with
the agents they go to) as they are routed, before any run can take them; a batch is done when
its run succeeded, or when it is safely a dead letter; a batch waiting for its retry stays
pending, and comes again after a crash.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ghitwork.dispatch import Dispatcher
from ghitwork.state import (
    Change,
    DeadLettersRedelivered,
    EventsRouted,
    Level,
    RunFinished,
    RunStarted,
    StateBus,
)
from ghitwork.store import Store

SYNC_DELAY = 0.1  # seconds an fsync of the journal may be deferred


class Journal:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        bus: StateBus,
        cursor: Callable[[], int | None],
        catching_up: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.bus = bus
        self.cursor = cursor
        self.catching_up = catching_up  # tail-events has more output waiting
        self._sessions: dict[str, str | None] = {}
        self._journaled = -1  # highest event id written to the journal
        self._sync_timer: asyncio.TimerHandle | None = None

    def started(self, cursor: int | None) -> None:
        """What the state dir already has, once the saved state is restored."""
        self._sessions = {n: a.session_id for n, a in self.dispatcher.agents.items()}
        self._journaled = cursor if cursor is not None else -1

    def read_up_to(self, cursor: int | None) -> None:
        """A read from tail-events was routed: the cursor moves (even past events no agent
        wanted), and everything it brought is written at once."""
        if cursor is not None and cursor > self._journaled:
            self.store.record({"c": cursor})
            self._journaled = cursor
        self._commit(sync=False)

    def __call__(self, change: Change) -> None:
        if isinstance(change, EventsRouted):
            last = self.store.record_events(change.routes)
            if last is not None:
                self._journaled = last
        elif isinstance(change, RunStarted):
            self.store.record(
                {"start": change.agent, "ids": list(change.event_ids), "at": round(change.at, 3)}
            )
            self._commit(sync=False)
        elif isinstance(change, RunFinished):
            # Done means succeeded, or safely a dead letter: a batch waiting for its retry
            # stays pending in the journal, and comes again after a crash.
            result = change.result
            if result.charge is not None:  # spent, whatever became of the batch
                self.store.record({"usage": result.charge.to_record()})
            if change.dead_letter is not None:
                self.store.record({"dead": change.dead_letter.record()})
            elif result.ok:
                self.store.record({"done": change.agent, "ids": list(result.event_ids)})
            session = self.dispatcher.agents[change.agent].session_id
            if self._sessions.get(change.agent) != session:
                self._sessions[change.agent] = session
                self.store.record({"session": change.agent, "id": session})
            self._commit(sync=change.dead_letter is not None)
        elif isinstance(change, DeadLettersRedelivered):
            for letter in change.letters:
                self.store.record({"redeliver": letter.id})
            self._commit(sync=True)

    def _commit(self, sync: bool = True) -> None:
        """Write what the journal buffered, at once (so a crash of ghit-work itself loses
        nothing: the OS has it), and fsync within SYNC_DELAY, so a flood costs a few fsyncs a
        second rather than one per read or per run. Only a power loss inside that window can
        lose the tail of the journal: tail-events then replays it (at-least-once holds), and
        an interrupted batch may come back without `redelivered` set.
        """
        try:
            self.store.flush(sync)
            if not sync and self._sync_timer is None:
                loop = asyncio.get_running_loop()
                self._sync_timer = loop.call_later(SYNC_DELAY, self._sync)
            if self.store.wants_compaction(self.catching_up(), self.dispatcher.queued()):
                self.store.compact(self.dispatcher.snapshot(self.cursor()))
        except OSError as error:
            self.bus.notice(
                Level.ERROR,
                "state",
                f"cannot write {self.store.dir}: {error.strerror or error}; "
                "events are kept in memory and written at the next chance",
            )

    def _sync(self) -> None:
        """The deferred fsync, on a worker thread: an fsync waits on the disk for
        milliseconds, with the GIL let go, while the loop goes on dispatching."""
        self._sync_timer = None
        try:
            fsync = self.store.sync_later()
        except OSError as error:
            self._sync_failed(error)
            return
        if fsync is not None:
            asyncio.get_running_loop().run_in_executor(None, fsync).add_done_callback(self._synced)

    def _synced(self, done: asyncio.Future[None]) -> None:
        error = None if done.cancelled() else done.exception()
        if isinstance(error, OSError):
            self._sync_failed(error)
        elif error is not None:
            raise error

    def _sync_failed(self, error: OSError) -> None:
        self.bus.notice(
            Level.ERROR,
            "state",
            f"cannot sync {self.store.dir}: {error.strerror or error}",
        )
