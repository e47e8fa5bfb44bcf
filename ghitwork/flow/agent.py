"""One agent: its conversations (SPEC §12), and what they share: the config, the run and
spend budgets, the session ids, the workspaces.

With `conversations = "agent"` the agent has one conversation, `""`, for ever: everything
behaves as it did before conversations existed. With `"thread"` a conversation exists while it
has something queued, running or waiting; one that is idle with nothing queued is dropped
(its session id and workspace stay here, as a string and a path), so a thousand threads that
went quiet cost a few dictionary entries. Everything runs on the asyncio loop's thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from reactivex import Observable

from ghitwork.bus.changes import (
    AgentPaused,
    AgentState,
    Change,
    ConversationsQueued,
)
from ghitwork.config.model import AgentConfig
from ghitwork.flow import policy
from ghitwork.flow.accounts import Accounts, Schedule
from ghitwork.flow.conversation import WAITING, Conversation
from ghitwork.flow.letters import DeadLetters
from ghitwork.flow.workdirs import Teardown, Workdirs
from ghitwork.model.conversations import OWN, main_scope, split
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.durations import MAX_BUDGET_RUNS
from ghitwork.model.events import Event
from ghitwork.model.ids import Ids
from ghitwork.model.results import RunResult
from ghitwork.model.usage import Ledger
from ghitwork.run.spec import RunSpec

RECENT_STARTS = MAX_BUDGET_RUNS  # run start times kept (enough for any run budget)
MAX_SESSIONS = 10_000  # session ids kept per agent (the most recently used)

# (the agent's config, what to run) -> the run (flow/dispatch.py)
Launch = Callable[[AgentConfig, RunSpec], Observable[RunResult]]
# where the agent's group asks for runs (routing.batch_while_busy): its deferred runs
Request = Callable[[tuple[Callable[[], Observable[Any]], ...]], None]


def call_later(delay: float, action: Callable[[], None]) -> Callable[[], None]:
    """Run `action` after `delay` seconds on the running asyncio loop; returns a cancel."""
    return asyncio.get_running_loop().call_later(delay, action).cancel


class Paused(msgspec.Struct, frozen=True):
    """Why and until when an agent is paused (SPEC §13)."""

    reason: str = ""
    until: float | None = None  # with --for: it resumes by itself then
    by: str = ""
    at: float = 0.0


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        launch: Launch,
        publish: Callable[[Change], None],
        clock: Callable[[], float] = time.time,
        schedule: Schedule | None = None,
        letters: DeadLetters | None = None,
        ledger: Ledger | None = None,
        environ: Mapping[str, str] | None = None,
        teardown: Teardown | None = None,
        accounts: Accounts | None = None,
    ) -> None:
        self.name = config.name
        self.environ = environ or {}  # ghit-work's environment (the run's, less the token)
        self.config = config
        self.clock = clock
        self.schedule = schedule or call_later
        self.launch = launch
        self.publish = publish
        self.conversations: dict[str, Conversation] = {}
        self.sessions: dict[str, str] = {}  # conversation -> its session id
        self.stopping = False
        self.removed = False  # not in the config any more (kept for its saved events)
        self.runs: list[float] = []  # start times of recent runs (for budgets)
        # Where spend budgets read this agent's recent spend (the dispatcher's, kept in
        # state_dir): the one source of usage totals.
        self.ledger = ledger or Ledger()
        self.run_scopes: deque[tuple[float, tuple[str, ...]]] = deque(maxlen=RECENT_STARTS)
        self._letters = letters
        self.workdirs = Workdirs(self, teardown)  # its conversations' workspaces
        self.paused: Paused | None = None
        self.accounts = accounts  # SPEC §14: whose usage limits are reached
        self._unpause: Callable[[], None] | None = None  # the --for timer
        # The agent's group in the pipeline (routing.batch_while_busy): where its
        # conversations ask for runs, and how its part of the flow ends at a stop or a
        # drain's end, once none of its conversations has a run outstanding.
        self.request: Request | None = None
        self.closing = False
        self._complete: Callable[[], None] | None = None
        self._open: set[str] = set()  # conversations not yet finished when it closed
        # While `add` takes a burst: the conversations it queued, and their states before
        # (published as one change, then their runs requested)
        self.queueing: list[tuple[Conversation, AgentState]] | None = None

    # -- conversations
    def conversation(self, key: str) -> Conversation:
        found = self.conversations.get(key)
        if found is None:
            found = self.conversations[key] = Conversation(self, key)
        return found

    # -- the Mailbox protocol of routing.batch_while_busy: the agent's group of the pipeline
    def attach(self, request: Request, complete: Callable[[], None]) -> None:
        self.request, self._complete = request, complete
        for conversation in list(self.conversations.values()):
            conversation.wake()  # restored before the group existed

    def add(self, parts: Sequence[tuple[str, Sequence[Event]]]) -> None:
        """A burst's events, per conversation. The conversations they queue are published
        as one change, then their runs are requested: a run that starts at once says so
        after its conversation was queued."""
        queued = self.queueing = []
        try:
            for key, events in parts:
                self.conversation(key).add(events)
        finally:
            self.queueing = None
            if queued:
                self._queued(queued)

    def _queued(self, queued: list[tuple[Conversation, AgentState]]) -> None:
        self.publish(
            ConversationsQueued(
                agent=self.name,
                queued=tuple([(c.key, old, len(c.pending)) for c, old in queued]),
            )
        )
        if self.request is not None:
            self.request(tuple([conversation.start for conversation, _ in queued]))

    def close(self) -> None:
        """Nothing more comes (a stop, a drain's end): the group ends once every
        conversation's outstanding run has ended."""
        self.closing = True
        self._open = {key for key, found in self.conversations.items() if not found.finished}
        self._end_if_done()

    def finish(self, conversation: Conversation) -> None:
        """Closing: `conversation` may have finished its part."""
        if conversation.finished or self.conversations.get(conversation.key) is not conversation:
            self._open.discard(conversation.key)
        self._end_if_done()

    def _end_if_done(self) -> None:
        if self.closing and not self._open and self._complete is not None:
            complete, self._complete = self._complete, None
            complete()

    def split(self, events: Sequence[Event]) -> list[tuple[str, tuple[Event, ...]]]:
        """`events` per conversation of this agent."""
        if not self.config.threads:
            return [(OWN, tuple(events))]
        return split(events)

    @property
    def pending(self) -> list[Event]:
        """Every event queued in any of its conversations (not the running batches)."""
        conversations = self.conversations.values()
        if len(self.conversations) == 1:
            return list(next(iter(conversations)).pending)
        return sorted((e for c in conversations for e in c.pending), key=lambda e: e.id)

    @property
    def working(self) -> bool:
        return any(c.state is AgentState.WORKING for c in self.conversations.values())

    def reconfigure(self, config: AgentConfig) -> None:
        """New settings (a reload): they apply from the next batch of each conversation."""
        to_threads = config.threads and not self.config.threads
        self.config = config
        for conversation in list(self.conversations.values()):
            conversation.reconfigure()
        if to_threads:
            self._split_own()

    def _split_own(self) -> None:
        """A reload to thread mode: what the agent's own conversation holds queued (not its
        running batch, nor a batch waiting for its retry or a human) goes to its threads, as a
        restart would split it: a thread's events then run in order, in batches of their own
        (SPEC §12)."""
        own = self.conversations.get(OWN)
        if own is None or not own.pending or own.state in (*WAITING, AgentState.NEEDS_INPUT):
            return
        parts = [(key, events) for key, events in split(own.pending) if key != OWN]
        if not parts:
            return
        moved = {event.id for _, events in parts for event in events}
        own.pending = [event for event in own.pending if event.id not in moved]
        marked = {i for i in own.redelivered if i in moved}
        own.redelivered = Ids(i for i in own.redelivered if i not in moved)
        self.add(parts)
        for key, events in parts:
            self.conversations[key].redelivered.update(e.id for e in events if e.id in marked)
        own.requeued()

    def settled(self, conversation: Conversation) -> None:
        """A conversation has nothing to do for now: in thread mode it is dropped, and its
        workspace's idle time starts."""
        if not conversation.idle:
            return
        key = conversation.key
        self.workdirs.idle(key)
        if not self.config.threads or self.conversations.get(key) is not conversation:
            return
        del self.conversations[key]
        if self.closing:
            self.finish(conversation)

    # -- pause and resume (SPEC §13)
    def pause(self, paused: Paused, restored: bool = False) -> None:
        """No run starts from now on (a running one finishes); events keep queueing.
        `restored`: a pause kept in state_dir, in force again at start (not a new one)."""
        self._cancel_unpause()
        self.paused = paused
        self.publish(
            AgentPaused(
                agent=self.name,
                paused=True,
                until=paused.until,
                reason=paused.reason,
                by=paused.by,
                since=paused.at,
                restored=restored,
            )
        )
        if paused.until is not None:
            delay = max(0.0, paused.until - self.clock())
            self._unpause = self.schedule(delay, self._ran_out)
        for conversation in list(self.conversations.values()):
            if conversation.pending and conversation.state in (
                AgentState.IDLE,
                AgentState.NEEDS_INPUT,
            ):
                conversation.wake()  # -> paused, with its events waiting

    def resume(self, by: str, conversation: str | None = None) -> int:
        """Lift the pause, and wake the needs-input conversations (only `conversation`'s,
        when given: then the pause stays). How many conversations it woke."""
        woken = 0
        if conversation is None:
            self._cancel_unpause()
            if self.paused is not None:
                self.paused = None
                self.publish(AgentPaused(agent=self.name, paused=False, by=by))
        for key, found in list(self.conversations.items()):
            if conversation is not None and key != conversation:
                continue
            if found.state is AgentState.NEEDS_INPUT or (
                found.state is AgentState.PAUSED and self.paused is None
            ):
                found.resume()
                woken += 1
        return woken

    def _ran_out(self) -> None:
        self._unpause = None
        self.resume("its --for ran out")

    def _cancel_unpause(self) -> None:
        if self._unpause is not None:
            self._unpause()
            self._unpause = None

    # -- quota windows (SPEC §14)
    def quota_until(self) -> float | None:
        """Until when its account's usage limit is reached, or None."""
        accounts = self.accounts
        if accounts is None or not accounts.closed:
            return None  # no account is closed: nothing to look up
        return accounts.until(self.config.quota_account)

    def close_account(self, reset: float, result: RunResult) -> float:
        """A run said the account's limit is reached until `reset`: until when every agent
        of the account waits (jitter included)."""
        if self.accounts is None:
            return reset
        reason = result.limit_line or result.last_stderr or result.describe()
        run = (result.conversation, result.event_ids)
        return self.accounts.close(self.config.quota_account, reset, self.name, reason, run)

    # -- what conversations share: budgets
    def throttle(self) -> policy.Throttle | None:
        if not self.config.budgeted:
            return None  # the common case, on every run's path: no budget, no reckoning
        return policy.throttle(self.config, self.runs, self.ledger.recent(self.name), self.clock())

    def started(self, batch: Sequence[Event]) -> None:
        """A run of one of its conversations started (budgets count it)."""
        started = self.clock()
        self.runs.append(started)
        del self.runs[:-RECENT_STARTS]
        if self.config.budget is not None:  # what a throttle message names (policy.hot_scope)
            self.run_scopes.append((started, tuple(main_scope(event) for event in batch)))

    def bury(self, key: str, batch: Sequence[Event], result: RunResult) -> DeadLetter | None:
        if self._letters is None:
            return None
        return self._letters.bury(self.name, batch, result, key)

    # -- sessions
    def set_session(self, key: str, session: str | None) -> None:
        sessions = self.sessions
        sessions.pop(key, None)
        if session is not None:
            sessions[key] = session  # the most recently used last
            if len(sessions) > MAX_SESSIONS:
                del sessions[next(iter(sessions))]

    def cancel_timers(self) -> None:
        self.workdirs.cancel_timers()
        self._cancel_unpause()

    # -- what its workspaces' record asks (workdirs.Owner)
    def busy(self, key: str) -> bool:
        found = self.conversations.get(key)
        return found is not None and not found.idle

    def wake(self, key: str) -> bool:
        found = self.conversations.get(key)
        if found is not None:
            found.wake()
        return found is not None
