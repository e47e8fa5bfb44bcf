"""The durable side of the state bus: every change that matters is written to the journal.

A subscriber of the state bus, like the status lines and the TUI. Events are journaled (with
the agents they go to) as they are routed, before any run can take them; a batch is done when
its run succeeded, or when it is safely a dead letter; a batch waiting for its retry stays
pending, and comes again after a crash.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from ghitwork.bus.changes import (
    AgentChanged,
    AgentPaused,
    AgentState,
    Change,
    ConversationsQueued,
    DeadLettersRedelivered,
    EventsRouted,
    Level,
    QuotaChanged,
    RunFinished,
    RunStarted,
    StateBus,
    WorkspaceChanged,
    handlers,
)
from ghitwork.persist.saved import Saved
from ghitwork.persist.store import StateDirError, Store

SYNC_DELAY = 0.1  # seconds an fsync of the journal may be deferred
KEPT_SESSIONS = 10_000  # session ids the journal remembers having written (the most recent)


class Journal:
    """`snapshot()`: everything a new snapshot holds now (the flow's state, at the cursor);
    `queued()`: the events it would hold (the compaction waits while that is large)."""

    def __init__(
        self,
        store: Store,
        bus: StateBus,
        snapshot: Callable[[], Saved],
        queued: Callable[[], int] = lambda: 0,
        catching_up: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.bus = bus
        self.snapshot = snapshot
        self._handle = handlers(vars(Journal)["_on"], self)
        self.queued = queued
        self.catching_up = catching_up  # tail-events has more output waiting
        # (agent, conversation) -> the session id state_dir has for it, the most recently
        # used last, at most KEPT_SESSIONS. One not here has none, until one was forgotten
        # (`_forgot`): a conversation with no session costs nothing here (SPEC §12).
        self._sessions: dict[tuple[str, str], str] = {}
        self._forgot = False
        self._journaled = -1  # highest event id written to the journal
        self._sync_timer: asyncio.TimerHandle | None = None
        self._failing: str | None = None  # the write error reported, until a write succeeds

    def started(self, saved: Saved) -> None:
        """What the state dir already has: the cursor and session ids it was loaded with."""
        self._sessions = {
            (name, conversation): session
            for name, agent in saved.agents.items()
            for conversation, session in agent.sessions.items()
        }
        self._journaled = saved.cursor if saved.cursor is not None else -1

    def read_up_to(self, cursor: int | None) -> None:
        """A read from tail-events was routed: the cursor moves (even past events no agent
        wanted), and everything it brought is written at once."""
        if cursor is not None and cursor > self._journaled:
            self.store.record({"c": cursor})
            self._journaled = cursor
        self._commit(sync=False)

    # -- one handler per Change type (the others are not journaled)
    def __call__(self, change: Change) -> None:
        self._handle(change)

    @functools.singledispatchmethod
    def _on(self, change: Change) -> None:
        pass

    @_on.register
    def _routed(self, change: EventsRouted) -> None:
        last = self.store.record_events(change.routes)
        if last is not None:
            self._journaled = last

    @_on.register
    def _started(self, change: RunStarted) -> None:
        self.store.record(
            {"start": change.agent, "ids": list(change.event_ids), "at": round(change.at, 3)}
        )
        self._commit(sync=False)

    @_on.register
    def _finished(self, change: RunFinished) -> None:
        # Done means succeeded, or safely a dead letter: a batch waiting for its retry
        # stays pending in the journal, and comes again after a crash.
        result = change.result
        if result.charge is not None:  # spent, whatever became of the batch
            self.store.record({"usage": result.charge.to_record()})
        if change.dead_letter is not None:
            self.store.record({"dead": change.dead_letter.record()})
        elif result.ok:
            self.store.record({"done": change.agent, "ids": list(result.event_ids)})
        if change.new is AgentState.NEEDS_INPUT:  # it waits for a human, across restarts
            asks: dict[str, object] = {"asks": change.agent, "q": change.result.question}
            if change.conversation:
                asks["conv"] = change.conversation
            self.store.record(asks)
        session, key = change.session_id, (change.agent, change.conversation)
        sessions = self._sessions
        known = sessions.pop(key, None)
        if session != known or (session is None and self._forgot):
            record: dict[str, object] = {"session": change.agent, "id": session}
            if change.conversation:
                record["conv"] = change.conversation
            self.store.record(record)
        if session is not None:
            sessions[key] = session
            if len(sessions) > KEPT_SESSIONS:  # a thread mode's threads: forget the oldest
                del sessions[next(iter(sessions))]
                self._forgot = True  # from now on a session cleared is always written
        self._commit(sync=change.dead_letter is not None)

    @_on.register
    def _changed(self, change: AgentChanged) -> None:
        if change.old is AgentState.NEEDS_INPUT and change.new is not AgentState.NEEDS_INPUT:
            self._answered(change.agent, change.conversation)

    @_on.register
    def _queued(self, change: ConversationsQueued) -> None:
        for conversation, old, _ in change.queued:
            if old is AgentState.NEEDS_INPUT:  # its next event woke it
                self._answered(change.agent, conversation)

    def _answered(self, agent: str, conversation: str) -> None:
        record: dict[str, object] = {"answered": agent}
        if conversation:
            record["conv"] = conversation
        self.store.record(record)
        self._commit(sync=False)

    @_on.register
    def _paused(self, change: AgentPaused) -> None:
        if change.restored:
            return  # in state_dir already
        record: dict[str, object] = {"pause": change.agent, "on": change.paused}
        if change.paused:
            record.update(
                until=change.until, reason=change.reason, by=change.by, at=change.since or change.at
            )
        self.store.record(record)
        self._commit(sync=True)  # a pause is an operator's word: on disk before it is done

    @_on.register
    def _quota(self, change: QuotaChanged) -> None:
        if change.restored:
            return  # in state_dir already
        self.store.record({"quota": change.account, "until": change.until})
        self._commit(sync=True)

    @_on.register
    def _workspace(self, change: WorkspaceChanged) -> None:
        record: dict[str, object] = {"ws": change.agent, "ready": change.ready}
        if change.conversation:
            record["conv"] = change.conversation
        if change.ready:
            record["path"] = change.path
            record["used"] = round(change.used if change.used is not None else change.at, 3)
        self.store.record(record)
        self._commit(sync=False)

    @_on.register
    def _redelivered(self, change: DeadLettersRedelivered) -> None:
        for letter in change.letters:
            self.store.record({"redeliver": letter.id})
        self._commit(sync=True)

    def _commit(self, sync: bool = True) -> None:
        """Write what the journal buffered, at once (so a crash of ghit-work itself loses
        nothing: the OS has it), and fsync within SYNC_DELAY, so a flood costs a few fsyncs a
        second rather than one per read or per run. Only a power loss inside that window can
        lose the tail of the journal: tail-events then replays it (at-least-once holds), and
        an interrupted batch may come back without `redelivered` set.

        A write that fails (a full disk) loses nothing: the store keeps the records and
        writes them whole at the next commit; a snapshot that cannot be written leaves the
        journal in force. It is reported once (again only if the error changes), and so is the
        first commit after which everything is on disk again.
        """
        try:
            self.store.flush(sync)
            if not sync and self._sync_timer is None:
                loop = asyncio.get_running_loop()
                self._sync_timer = loop.call_later(SYNC_DELAY, self._sync)
            if self.store.wants_compaction(self.catching_up(), self.queued):
                self.store.compact(self.snapshot())
        except (OSError, StateDirError) as error:
            self._write_failed(error)
            return
        if self._failing is not None and not self.store.dirty and not self.store.snapshot_failed:
            self._failing = None
            self.bus.notice(
                Level.INFO,
                "state",
                f"state_dir {self.store.dir}: written again; the journal has every change",
            )

    def _write_failed(self, error: OSError | StateDirError) -> None:
        message = (
            str(error)
            if isinstance(error, StateDirError)
            else f"state_dir {self.store.dir}: cannot write: {error.strerror or error}"
        )
        if message == self._failing:
            return
        self._failing = message
        kept = self.store.unwritten
        self.bus.notice(
            Level.ERROR,
            "state",
            f"{message}; "
            + (
                f"{kept} change(s) are kept in memory and written whole at the next chance "
                "(a crash meanwhile loses none of the events: tail-events reads them again)"
                if kept
                else "the journal has every change: nothing is lost"
            ),
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
