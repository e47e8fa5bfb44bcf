"""What the TUI shows, reduced from the state bus; no asciimatics here.

`DashboardModel` subscribes to the state bus and folds every change into a small model;
`view()` hands the screen an immutable `View`, rebuilt only when something changed, so the
screen draws the latest snapshot (never a queue of frames) and an idle dashboard costs
nothing. The model and the screen run on the one asyncio thread.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from ghitwork.config import AgentConfig, Config
from ghitwork.deadletters import DeadLetter
from ghitwork.events import Event
from ghitwork.results import RunResult
from ghitwork.state import (
    AgentChanged,
    AgentState,
    Change,
    ConfigApplied,
    DeadLettersLoaded,
    DeadLettersRedelivered,
    EventSkipped,
    EventsRouted,
    Level,
    Notice,
    RunFinished,
    RunStarted,
    SourceExited,
    SourceRetry,
    SourceStarted,
    StopRequested,
    UsageLoaded,
)
from ghitwork.status import LEVELS, describe, id_ranges, only_info, routed_line
from ghitwork.usage import NO_USAGE, Usage, day_of

MAX_EVENTS = 500
MAX_LOG = 2000
MAX_ATTENTION = 200
MAX_RUNS = 20


@dataclass(frozen=True, slots=True)
class EventLine:
    id: int
    kind: str
    actor: str
    scopes: tuple[str, ...]
    title: str
    agents: tuple[str, ...]

    def matches(self, needle: str) -> bool:
        needle = needle.lower()
        return any(
            needle in text.lower() for text in (self.kind, self.actor, self.title, *self.scopes)
        )


@dataclass(frozen=True, slots=True)
class AgentView:
    name: str
    state: AgentState
    since: float
    queue: int = 0
    batch: tuple[tuple[int, str, str], ...] = ()  # (id, kind, title), the first BATCH_SHOWN
    batch_ids: tuple[int, ...] = ()  # the whole batch
    session_id: str | None = None
    runs: tuple[RunResult, ...] = ()
    problem: str = ""
    config: AgentConfig | None = None
    usage_total: Usage = NO_USAGE
    usage_today: Usage = NO_USAGE
    today: str = ""  # the day usage_today is of
    attempt: int = 1  # of the current run, or of the next one while retrying
    due: float | None = None  # when a retrying or rate-limited agent runs again
    dead_letters: tuple[DeadLetter, ...] = ()

    @property
    def shown_state(self) -> str:
        """The strip's word: an idle agent whose last run failed is shown as failing."""
        if self.state is AgentState.IDLE and self.problem:
            return "failing"
        return str(self.state)


@dataclass(frozen=True, slots=True)
class View:
    config_path: str = ""
    limit: int = 0
    retry: float = 0.0
    health: str = "starting"
    retry_at: float | None = None  # when the next tail-events start is due (retrying)
    retry_used: float = 0.0
    events_seen: int = 0
    batches_run: int = 0
    failures: int = 0
    cost_today: float = 0.0  # the fleet's
    agents: tuple[AgentView, ...] = ()
    events: tuple[EventLine, ...] = ()
    attention: tuple[str, ...] = ()
    log: tuple[str, ...] = ()


@dataclass
class _Agent:
    view: AgentView
    runs: deque[RunResult] = field(default_factory=lambda: deque(maxlen=MAX_RUNS))


class DashboardModel:
    def __init__(
        self,
        level: Level = Level.INFO,
        clock: Callable[[], float] = time.time,
        secrets: Sequence[str] = (),
    ) -> None:
        self.threshold = LEVELS[level]
        self.secrets = [s for s in secrets if len(s) >= 4]
        self.clock = clock
        self.config: Config | None = None
        self.agents: dict[str, _Agent] = {}
        # Recent events as they came (the lines are made only when a view is asked for: a
        # catch-up of 100,000 events must not build 100,000 lines nobody reads).
        self.events: deque[tuple[Event, tuple[str, ...]]] = deque(maxlen=MAX_EVENTS)
        self._lines: dict[int, EventLine] = {}  # the lines made so far, by event id
        self.log: deque[str] = deque(maxlen=MAX_LOG)
        self.attention: deque[str] = deque(maxlen=MAX_ATTENTION)
        self.health = "starting"
        self.retry_at: float | None = None
        self.retry_used = 0.0
        self.events_seen = 0
        self.batches_run = 0
        self.failures = 0
        self.version = 0
        self._view: View | None = None
        self._view_version = -1

    # -- input
    def __call__(self, change: Change) -> None:
        self.version += 1
        if isinstance(change, EventsRouted):
            self._events(change)
            return  # the per-event path stays short: no log line unless debugging
        if isinstance(change, ConfigApplied):
            self._configure(change.config)
        elif isinstance(change, AgentChanged):
            self._agent(
                change.agent,
                state=change.new,
                since=change.at,
                queue=change.queue,
                problem=change.reason if change.new is AgentState.FAILING else "",
                due=None,
            )
        elif isinstance(change, RunStarted):
            batch = tuple((e.id, *_kind_and_title(e)) for e in change.shown)
            self._agent(
                change.agent,
                state=AgentState.WORKING,
                since=change.at,
                queue=change.queue,
                batch=batch,
                batch_ids=change.event_ids,
                session_id=change.session_id,
                attempt=change.attempt,
                due=None,
            )
        elif isinstance(change, RunFinished):
            self._finished(change)
        elif isinstance(change, DeadLettersLoaded | DeadLettersRedelivered):
            self._dead_letters(change)
        elif isinstance(change, UsageLoaded):
            day = day_of(self.clock())
            for name, total in change.totals.items():
                today = change.days.get(name, {}).get(day, Usage())
                self._agent(name, usage_total=total, usage_today=today, today=day)
        elif isinstance(change, StopRequested):
            self.health, self.retry_at = "stopping", None
        elif self.health == "stopping":
            pass  # what the stream does while stopping changes nothing
        elif isinstance(change, SourceStarted):
            self.health, self.retry_at = "healthy", None
        elif isinstance(change, SourceRetry):
            self.health = "retrying"
            self.retry_at = change.at + change.delay
            self.retry_used = change.used
        elif isinstance(change, SourceExited) and self.health == "healthy":
            self.health = "retrying"
        elif (
            isinstance(change, Notice)
            and change.topic == "tail-events"
            and change.level is Level.ERROR
        ):
            self.health, self.retry_at = "failing", None
        if self.threshold > LEVELS[Level.INFO] and only_info(change):
            return
        line = describe(change)
        if line is None or LEVELS[line.level] < self.threshold:
            return
        text = self._redact(f"{_hms(change.at)} {line.message}")
        self.log.append(text)
        if LEVELS[line.level] >= LEVELS[Level.WARNING] or isinstance(change, EventSkipped):
            self.attention.append(text)

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def note(self, message: str) -> None:
        """Something the operator did (e.g. `k`), confirmed in the attention pane."""
        self.version += 1
        text = f"{_hms(self.clock())} {message}"
        self.attention.append(text)
        self.log.append(text)

    def _events(self, change: EventsRouted) -> None:
        routes = change.routes
        self.events_seen += len(routes)
        self.events.extend(routes)
        if self.threshold <= LEVELS[Level.DEBUG]:
            for event, agents in routes:
                self.log.append(f"{_hms(change.at)} {routed_line(event, agents).message}")

    def _configure(self, config: Config) -> None:
        self.config = config
        names = {agent.name for agent in config.agents}
        for agent in config.agents:
            state = AgentState.IDLE if agent.enabled else AgentState.DISABLED
            current = self.agents.get(agent.name)
            if current is None:
                self.agents[agent.name] = _Agent(
                    AgentView(agent.name, state, self.clock(), config=agent)
                )
            else:
                view = current.view
                if not agent.enabled and view.state is not AgentState.WORKING:
                    view = replace(view, state=AgentState.DISABLED)
                current.view = replace(view, config=agent)
        for name, current in self.agents.items():
            if name not in names and current.view.config is not None:
                current.view = replace(
                    current.view, config=replace(current.view.config, enabled=False)
                )

    def _agent(self, name: str, **updates: object) -> None:
        current = self.agents.get(name)
        if current is None:
            current = self.agents[name] = _Agent(AgentView(name, AgentState.IDLE, self.clock()))
        if updates:
            current.view = replace(current.view, **updates)  # type: ignore[arg-type]

    def _finished(self, change: RunFinished) -> None:
        result = change.result
        self.batches_run += 1
        if not result.ok and not result.stopped:
            self.failures += 1
        current = self.agents.get(change.agent)
        if current is None:
            current = self.agents[change.agent] = _Agent(
                AgentView(change.agent, change.new, change.at)
            )
        current.runs.append(result)
        failed = "" if result.ok or result.stopped else result.describe()
        letters = current.view.dead_letters
        if change.dead_letter is not None:
            letters = (*letters, change.dead_letter)
        total, today, day = current.view.usage_total, current.view.usage_today, current.view.today
        if result.charge is not None:
            if result.charge.day != day:
                today, day = Usage(), result.charge.day
            total, today = total + result.charge.usage, today + result.charge.usage
        current.view = replace(
            current.view,
            state=change.new,
            since=change.at,
            queue=change.queue,
            batch=(),
            batch_ids=(),
            problem=failed,
            session_id=result.session_id or current.view.session_id,
            runs=tuple(current.runs),
            attempt=change.retry.attempt if change.retry else 1,
            due=change.retry_at,
            dead_letters=letters,
            usage_total=total,
            usage_today=today,
            today=day,
        )

    def _dead_letters(self, change: DeadLettersLoaded | DeadLettersRedelivered) -> None:
        for letter in change.letters:
            self._agent(letter.agent)
            current = self.agents[letter.agent]
            kept = tuple(d for d in current.view.dead_letters if d.id != letter.id)
            if isinstance(change, DeadLettersLoaded):
                kept = (*kept, letter)
            current.view = replace(current.view, dead_letters=kept)

    # -- output
    def _event_lines(self) -> tuple[EventLine, ...]:
        lines, made = [], {}
        for event, agents in self.events:
            line = self._lines.get(event.id)
            if line is None:
                _, title = _kind_and_title(event)
                line = EventLine(
                    event.id, event.kind, event.actor or "-", event.scopes, title, agents
                )
            made[event.id] = line
            lines.append(line)
        self._lines = made  # only the lines still shown are kept
        return tuple(lines)

    def view(self) -> View:
        """The latest snapshot; the same object while nothing changed."""
        if self._view is not None and self._view_version == self.version:
            return self._view
        config = self.config
        day = day_of(self.clock())
        cost_today = sum(
            a.view.usage_today.cost_usd for a in self.agents.values() if a.view.today == day
        )
        self._view = View(
            config_path=str(config.path) if config else "",
            limit=config.limit if config else 0,
            retry=config.retry if config else 0.0,
            health=self.health,
            retry_at=self.retry_at,
            retry_used=self.retry_used,
            events_seen=self.events_seen,
            batches_run=self.batches_run,
            failures=self.failures,
            cost_today=cost_today,
            agents=tuple(a.view for a in self.agents.values()),
            events=self._event_lines(),
            attention=tuple(self.attention),
            log=tuple(self.log),
        )
        self._view_version = self.version
        return self._view


def _kind_and_title(event: Event | None) -> tuple[str, str]:
    if event is None:
        return "", ""
    summary = event.data.get("summary")
    title = summary.get("thread_title", "") if isinstance(summary, dict) else ""
    return event.kind, title if isinstance(title, str) else ""


def _hms(moment: float) -> str:
    return datetime.fromtimestamp(moment).strftime("%H:%M:%S")


def batch_text(view: AgentView) -> str:
    return id_ranges(view.batch_ids)
