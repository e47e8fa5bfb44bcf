"""The state changes of a running ghit-work, carried by one subject.

The stderr status lines and the TUI are both subscribers of `StateBus.changes`; neither reaches
into the pipeline. Everything is published from the asyncio loop's thread, the one owner.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from reactivex.subject import Subject

from ghitwork.config import Config
from ghitwork.deadletters import DeadLetter
from ghitwork.events import Event, Malformed
from ghitwork.policy import Retry
from ghitwork.results import RunResult
from ghitwork.usage import Usage


class AgentState(StrEnum):
    IDLE = "idle"
    QUEUED = "queued"  # has events, waiting for a slot under `limit`
    WORKING = "working"  # an invocation is running
    RETRYING = "retrying"  # its batch failed and waits for its next attempt
    RATE_LIMITED = "rate-limited"  # its batch hit a rate limit and waits to run again
    THROTTLED = "throttled"  # over its run budget, events keep batching
    FAILING = "failing"  # cannot start (the template failed); waits for a reload
    DISABLED = "disabled"  # enabled = false, or removed from the config


class Level(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def _now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    at: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentChanged(Change):
    """An agent moved between states other than through a run (queued, throttled, ...)."""

    agent: str
    old: AgentState
    new: AgentState
    queue: int
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Change):
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Change):
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


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageLoaded(Change):
    """Token use and cost kept in state_dir, at start: per agent all-time and per day."""

    totals: Mapping[str, Usage]
    days: Mapping[str, Mapping[str, Usage]]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLettersLoaded(Change):
    """The dead letters kept in state_dir, at start."""

    letters: tuple[DeadLetter, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLettersRedelivered(Change):
    """Dead letters handed back to their agents (by `ghit-work redeliver` or the TUI)."""

    letters: tuple[DeadLetter, ...]
    by: str = ""  # who handed them back: "ghit-work redeliver", "the dashboard"


BATCH_SHOWN = 30  # events of a batch listed with kind and title (the rest by id only)
Route = tuple[Event, tuple[str, ...]]  # an event and the agents it went to (maybe none)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsRouted(Change):
    """The events of one read from the stream, in order, each with the agents it went to."""

    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class EventSkipped(Change):
    """Malformed output from tail-events, reported and skipped."""

    malformed: Malformed


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStarted(Change):
    pid: int
    argv: tuple[str, ...]
    cursor: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceExited(Change):
    status: int | None  # None: it could not start at all
    reason: str  # last stderr line, or why it could not start
    expected: bool = False  # ghit-work stopped or restarted it


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRetry(Change):
    delay: float
    used: float  # seconds of the retry window used so far
    window: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice(Change):
    """Anything else worth a status line: reloads, stderr of tail-events, agent output."""

    level: Level
    topic: str  # "reload", "tail-events", "agent", "stop", ...
    message: str
    agent: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StopRequested(Change):
    """A stop began (SIGTERM, SIGINT, `q`): from now on the instance is not healthy."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigApplied(Change):
    """The config in force: at start and after each successful reload."""

    config: Config


class StateBus:
    """The one subject every state change goes through."""

    def __init__(self) -> None:
        self.changes: Subject[Change] = Subject()

    def publish(self, change: Change) -> None:
        self.changes.on_next(change)

    def notice(self, level: Level, topic: str, message: str, agent: str | None = None) -> None:
        self.publish(Notice(level=level, topic=topic, message=message, agent=agent))
