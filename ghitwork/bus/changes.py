"""The state changes of a running ghit-work, carried by one subject.

The stderr status lines and the TUI are both subscribers of `StateBus.changes`; neither reaches
into the pipeline. Everything is published from the asyncio loop's thread, the one owner.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from enum import StrEnum
from typing import Any, TypeVar

import msgspec
from reactivex.subject import Subject

from ghitwork.config.model import Config
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.decisions import Retry
from ghitwork.model.events import Event, Malformed
from ghitwork.model.results import RunResult
from ghitwork.model.usage import Usage


class AgentState(StrEnum):
    IDLE = "idle"
    QUEUED = "queued"  # has events, waiting for a slot under `limit`
    WORKING = "working"  # an invocation is running
    RETRYING = "retrying"  # its batch failed and waits for its next attempt
    RATE_LIMITED = "rate-limited"  # its batch hit a rate limit and waits to run again
    THROTTLED = "throttled"  # over its run budget, events keep batching
    DISABLED = "disabled"  # enabled = false, or removed from the config
    PAUSED = "paused"  # `ghit-work pause`: no run starts, events keep batching (SPEC §13)
    NEEDS_INPUT = "needs-input"  # its last run asked a human; its next event wakes it
    QUOTA = "quota"  # its account's usage limit is reached until it resets (SPEC §14)


class Level(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def _now() -> float:
    return time.time()


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """A change of state (subclasses say which): a frozen, keyword-only value (a msgspec
    Struct, as every value of ghit-work: docs/design.md, "Values are msgspec Structs")."""

    at: float = msgspec.field(default_factory=_now)


class AgentChanged(Change, frozen=True, kw_only=True):
    """A conversation of an agent moved between states other than through a run (queued,
    throttled, ...). With `conversations = "agent"` the agent's one conversation is `""`,
    and its state is the agent's."""

    agent: str
    old: AgentState
    new: AgentState
    queue: int  # the conversation's
    reason: str = ""
    conversation: str = ""
    due: float | None = None  # throttled, quota: when it may run again
    # entering throttled: the events it holds back (the first SHOWN_WAITING), for the
    # notification's ids and thread URL (SPEC §13)
    waiting: tuple[Event, ...] = ()


class ConversationsQueued(Change, frozen=True, kw_only=True):
    """Conversations of one agent that the events of one read queued, waiting for a slot:
    for each, what an AgentChanged to `queued` says (`each`). One change per agent and read,
    not one per conversation: thread mode's catch-up queues thousands of conversations a
    read, and a change each was a third of its time."""

    agent: str
    queued: tuple[tuple[str, AgentState, int], ...]  # (conversation, its state before, queue)

    def each(self, leaving: Collection[AgentState] | None = None) -> Iterator[AgentChanged]:
        """Each conversation's AgentChanged (only those that left a state in `leaving`)."""
        for conversation, old, queue in self.queued:
            if leaving is not None and old not in leaving:
                continue
            yield AgentChanged(
                at=self.at,
                agent=self.agent,
                old=old,
                new=AgentState.QUEUED,
                queue=queue,
                conversation=conversation,
            )


class RunStarted(Change, frozen=True, kw_only=True):
    agent: str
    old: AgentState
    event_ids: tuple[int, ...]
    pid: int | None
    resumed: bool
    redelivered: bool
    session_id: str | None
    queue: int
    attempt: int = 1
    attempts: int = 1  # run_attempts of the agent
    shown: tuple[Event, ...] = ()  # the batch's first BATCH_SHOWN events, listed by viewers
    conversation: str = ""


class RunFinished(Change, frozen=True, kw_only=True):
    """A run ended, and what becomes of its batch: done, retried (`retry`, due at
    `retry_at`), or a dead letter."""

    agent: str
    result: RunResult
    new: AgentState
    queue: int
    attempts: int = 1
    retry: Retry | None = None
    retry_at: float | None = None
    dead_letter: DeadLetter | None = None
    session_id: str | None = None  # the conversation's session from now on (resumed next)
    conversation: str = ""


class WorkspaceChanged(Change, frozen=True, kw_only=True):
    """A conversation's workspace (SPEC §12) was set up (`ready`), used by a run (`used`), or
    removed after `workspace_keep` of idleness (`ready` false)."""

    agent: str
    conversation: str
    path: str
    ready: bool
    used: float | None = None  # when a run of it last ended


class AgentPaused(Change, frozen=True, kw_only=True):
    """An agent was paused (`paused`) or resumed, by `by` ("ghit-work pause", "the
    dashboard", "http 127.0.0.1", "its --for ran out"); durable (SPEC §13)."""

    agent: str
    paused: bool
    until: float | None = None  # with --for: when it resumes by itself
    reason: str = ""
    by: str = ""
    since: float | None = None  # when it was paused
    restored: bool = False  # a pause kept in state_dir, in force again at start (not new)


class QuotaChanged(Change, frozen=True, kw_only=True):
    """An account's usage limit was reached (`until`: when it resets, jitter included) or
    its window is over (`until` None); every agent of `agents` waits for it (SPEC §14)."""

    account: str  # the agents' `account`, or the agent's name when it has none
    until: float | None
    agents: tuple[str, ...]
    agent: str = ""  # whose run said so
    reason: str = ""  # what that run printed (its last stderr line, redacted)
    conversation: str = ""  # that run's conversation (SPEC §12)
    event_ids: tuple[int, ...] = ()  # that run's batch, which waits for the reset
    restored: bool = False  # kept in state_dir, in force again at start (not new)


class UsageLoaded(Change, frozen=True, kw_only=True):
    """Token use and cost kept in state_dir, at start: per agent all-time and per day."""

    totals: Mapping[str, Usage]
    days: Mapping[str, Mapping[str, Usage]]
    # per agent, per conversation (SPEC §12; `""` is the agent's own conversation)
    conversations: Mapping[str, Mapping[str, Usage]] = msgspec.field(default_factory=dict)


class SessionsLoaded(Change, frozen=True, kw_only=True):
    """The session ids kept in state_dir, at start: per agent, per conversation (`""` is the
    agent's own), the session each one's next batch resumes."""

    sessions: Mapping[str, Mapping[str, str]]


class DeadLettersLoaded(Change, frozen=True, kw_only=True):
    """The dead letters kept in state_dir, at start."""

    letters: tuple[DeadLetter, ...]


class DeadLettersRedelivered(Change, frozen=True, kw_only=True):
    """Dead letters handed back to their agents (by `ghit-work redeliver` or the TUI)."""

    letters: tuple[DeadLetter, ...]
    by: str = ""  # who handed them back: "ghit-work redeliver", "the dashboard"


BATCH_SHOWN = 30  # events of a batch listed with kind and title (the rest by id only)
Route = tuple[Event, tuple[str, ...]]  # an event and the agents it went to (maybe none)
# an agent, and its conversations' events of one read (SPEC §12; `""` in agent mode)
Delivery = tuple[str, tuple[tuple[str, tuple[Event, ...]], ...]]


class EventsRestored(Change, frozen=True, kw_only=True):
    """Saved events queued again at start, per agent (enabled or not): how many."""

    counts: Mapping[str, int]


class EventsRouted(Change, frozen=True, kw_only=True):
    """The events of one read from the stream, in order, each with the agents it went to;
    and, per agent, which of its conversations they went to (what queues grow)."""

    routes: tuple[Route, ...]
    deliveries: tuple[Delivery, ...] = ()


class EventSkipped(Change, frozen=True, kw_only=True):
    """Malformed output from tail-events, reported and skipped."""

    malformed: Malformed


class SourceStarted(Change, frozen=True, kw_only=True):
    pid: int
    argv: tuple[str, ...]
    cursor: int | None


class SourceExited(Change, frozen=True, kw_only=True):
    status: int | None  # None: it could not start at all
    reason: str  # last stderr line, or why it could not start
    expected: bool = False  # ghit-work stopped or restarted it


class SourceRetry(Change, frozen=True, kw_only=True):
    delay: float
    used: float  # seconds of the retry window used so far
    window: float
    reason: str


class Notice(Change, frozen=True, kw_only=True):
    """Anything else worth a status line: reloads, stderr of tail-events, agent output."""

    level: Level
    topic: str  # "reload", "tail-events", "agent", "stop", ...
    message: str
    agent: str | None = None
    conversation: str = ""  # the agent's conversation it concerns (SPEC §12), if one


class StopRequested(Change, frozen=True, kw_only=True):
    """A stop began (SIGTERM, SIGINT, `q`): from now on the instance is not healthy."""

    reason: str


class ConfigApplied(Change, frozen=True, kw_only=True):
    """The config in force: at start and after each successful reload."""

    config: Config


class StateBus:
    """The one subject every state change goes through."""

    def __init__(self) -> None:
        self.changes: Subject[Change] = Subject()
        # What a subscriber's exception becomes (the daemon makes it fatal, SPEC §11); by
        # default it is raised to the publisher.
        self.fail: Callable[[Exception], None] | None = None

    def publish(self, change: Change) -> None:
        if self.fail is None:
            self.changes.on_next(change)
            return
        try:
            self.changes.on_next(change)
        except Exception as error:
            self.fail(error)

    def notice(self, level: Level, topic: str, message: str, agent: str | None = None) -> None:
        self.publish(Notice(level=level, topic=topic, message=message, agent=agent))


_R = TypeVar("_R")


def handlers(method: functools.singledispatchmethod[_R], owner: object) -> Callable[[Change], _R]:
    """`method`'s handlers bound to `owner`, found by the change's type in a dict: one lookup
    per change. (3.11's singledispatchmethod builds a wrapper at every access and looks the
    type up in a weak dict at every call: ~4 us a change and a subscriber, on every event.)
    `method` is the descriptor itself: `vars(Class)["name"]`."""
    dispatch = method.dispatcher.dispatch
    found: dict[type[Any], Callable[[Change], _R]] = {}

    def handle(change: Change) -> _R:
        handler = found.get(type(change))
        if handler is None:
            handler = found[type(change)] = dispatch(type(change)).__get__(owner)
        return handler(change)

    return handle
