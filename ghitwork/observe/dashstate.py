"""The dashboard model's kept state and its output (observe/dashboard.py's `DashboardModel`
is this plus its reducers): the agents by name, the recent events and log lines, the health of
the stream; finding and settling an agent's conversations; the redacted `View` snapshot.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from collections.abc import Callable, Iterable

from msgspec.structs import replace

from ghitwork.bus.changes import (
    AgentState,
    Change,
    DeadLettersLoaded,
    DeadLettersRedelivered,
    Level,
    handlers,
)
from ghitwork.config.model import AgentConfig, Config
from ghitwork.model.conversations import OWN
from ghitwork.model.events import Event
from ghitwork.model.redact import Redactor
from ghitwork.model.usage import day_of
from ghitwork.observe.agents import _Agent, _Conversation
from ghitwork.observe.lines import LEVELS, printable
from ghitwork.observe.view import (
    AgentView,
    EventLine,
    View,
    _hms,
    kind_and_title,
    redacted_view,
)

MAX_EVENTS = 500
MAX_LOG = 2000
MAX_ATTENTION = 200


class _DashboardState:
    """What `DashboardModel` keeps, and what it hands out (`view()`, `note()`)."""

    def __init__(
        self,
        level: Level = Level.INFO,
        clock: Callable[[], float] = time.time,
        redactor: Redactor | None = None,
    ) -> None:
        self.threshold = LEVELS[level]
        # DashboardModel's handlers (observe/dashboard.py), one per Change type
        self._apply: Callable[[Change], bool] = handlers(
            inspect.getattr_static(self, "_reduce"), self
        )
        self.redactor = redactor or Redactor()  # the shared one (redact.py), kept current
        self._redacted_by = self.redactor.generation  # the secrets the kept lines are without
        # name -> (the agent's view, the redactor's generation, that view redacted)
        self._shown: dict[str, tuple[AgentView, int, AgentView]] = {}
        self.clock = clock
        self.config: Config | None = None
        self.agents: dict[str, _Agent] = {}
        self._threads: frozenset[str] = frozenset()  # agents with one conversation per thread
        self._routed_at = -1.0  # when `_queued` last made conversations the most recently active
        # Recent events as they came (the lines are made only when a view is asked for: a
        # catch-up of 100,000 events must not build 100,000 lines nobody reads).
        self.events: deque[tuple[Event, tuple[str, ...]]] = deque(maxlen=MAX_EVENTS)
        self._lines: dict[int, EventLine] = {}  # the lines made so far, by event id
        self.log: deque[str] = deque(maxlen=MAX_LOG)
        self.attention: deque[str] = deque(maxlen=MAX_ATTENTION)
        self.quotas: dict[str, float] = {}  # SPEC §14: account -> closed until
        self.health = "starting"
        self.retry_at: float | None = None
        self.retry_used = 0.0
        self.events_seen = 0
        self.batches_run = 0
        self.failures = 0
        self.version = 0
        self._view: View | None = None
        self._view_version = -1

    def _redact(self, text: str) -> str:
        """A line of the log or attention pane: redacted, its control characters escaped."""
        if self.redactor.generation != self._redacted_by:
            self._redact_kept()
        return printable(self.redactor.text(text))

    def _redact_kept(self) -> None:
        """The secrets changed (a reload): the lines kept so far are redacted again, and the
        event lines made again."""
        self._redacted_by = self.redactor.generation
        text = self.redactor.text
        self.log = deque(map(text, self.log), maxlen=MAX_LOG)
        self.attention = deque(map(text, self.attention), maxlen=MAX_ATTENTION)
        self._lines = {}
        self.version += 1

    def note(self, message: str) -> None:
        """Something the operator did (e.g. `k`), confirmed in the attention pane."""
        self.version += 1
        text = self._redact(f"{_hms(self.clock())} {message}")
        self.attention.append(text)
        self.log.append(text)

    def _queued(self, added: Iterable[tuple[str, Iterable[tuple[str, int]]]]) -> None:
        """For each agent, `count` events queued in each (conversation, count): queues grow
        now, not at the next state change."""
        now = self._routed_at = self.clock()
        for name, counts in added:
            current = self._agent(name)  # its view is made again
            for key, count in counts:
                current.grew(key, count, now)

    def _configure(self, config: Config, at: float) -> None:
        self.config = config
        self._threads = frozenset(agent.name for agent in config.agents if agent.threads)
        names = {agent.name for agent in config.agents}
        for agent in config.agents:
            current = self.agents.get(agent.name)
            if current is None:
                state = AgentState.IDLE if agent.enabled else AgentState.DISABLED
                current = self.agents[agent.name] = _Agent(
                    agent.name, state, self.clock(), config=agent
                )
                if not agent.threads:
                    current.conversation(OWN, current.since, state)
                continue
            current.config, current.shown = agent, None
            if not agent.enabled and current.state is not AgentState.WORKING:
                current.state = AgentState.DISABLED
            self._reconfigure(current, agent, at)
        for name, current in self.agents.items():
            if name not in names and current.config is not None:
                current.config, current.shown = replace(current.config, enabled=False), None

    @staticmethod
    def _reconfigure(current: _Agent, agent: AgentConfig, at: float) -> None:
        """A reload: a disabled agent's conversations are disabled (a running one finishes);
        in thread mode, the ones the flow forgot come back to idle with the agent (the flow
        tells those it still has). Like the agent's, their `since` stays."""
        conversations = current.conversations
        if not agent.threads and OWN not in conversations:
            current.conversation(OWN, current.since, current.state)
        for found in list(conversations.values()):
            if not agent.enabled and found.state is not AgentState.WORKING:
                found.state = AgentState.DISABLED
            elif agent.enabled and agent.threads and found.state is AgentState.DISABLED:
                found.state = AgentState.IDLE
            else:
                continue
            current.changed(found)
        current.settle(at)

    def _conversation(self, name: str, key: str, at: float) -> _Conversation:
        """A conversation of `name` about to change (at `at`): the most recently active."""
        current = self._agent(name)
        found = current.conversation(key, at)
        found.active = at
        if current.threads:
            current.unplaced = 0  # its conversations tell their queues from now on
        return found

    def sweep(self) -> None:
        """Once a second (the daemon's tick): idle conversations with nothing queued and no
        session are left out once idle for agents.IDLE_KEPT (SPEC §12)."""
        now = self.clock()
        for agent in self.agents.values():
            if agent.forget_idle(now):
                self.version += 1

    def _settle(self, name: str, found: _Conversation, at: float) -> None:
        """After `found`, a conversation of `name`, changed: the agent's state."""
        current = self.agents[name]
        current.changed(found)
        current.settle(at)

    def _agent(self, name: str) -> _Agent:
        current = self.agents.get(name)
        if current is None:
            now = self.clock()
            current = self.agents[name] = _Agent(name, AgentState.IDLE, now)
            if name not in self._threads:
                current.conversation(OWN, now)
        current.shown = None
        return current

    def _dead_letters(self, change: DeadLettersLoaded | DeadLettersRedelivered) -> None:
        for letter in change.letters:
            current = self._agent(letter.agent)
            kept = tuple(d for d in current.dead_letters if d.id != letter.id)
            if isinstance(change, DeadLettersLoaded):
                kept = (*kept, letter)
            current.dead_letters = kept

    # -- output
    def _event_lines(self) -> tuple[EventLine, ...]:
        lines, made = [], {}
        for event, agents in self.events:
            line = self._lines.get(event.id)
            if line is None:
                _, title = kind_and_title(event)
                line = EventLine(
                    event.id,
                    event.kind,
                    event.actor or "-",
                    event.scopes,
                    self.redactor.text(title),
                    agents,
                )
            made[event.id] = line
            lines.append(line)
        self._lines = made  # only the lines still shown are kept
        return tuple(lines)

    def view(self) -> View:
        """The latest snapshot; the same object while nothing changed."""
        if self.redactor.generation != self._redacted_by:
            self._redact_kept()
        if self._view is not None and self._view_version == self.version:
            return self._view
        config = self.config
        day = day_of(self.clock())
        cost_today = sum(a.usage_today.cost_usd for a in self.agents.values() if a.today == day)
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
            agents=tuple(self._shown_agent(a.view()) for a in self.agents.values()),
            events=self._event_lines(),
            attention=tuple(self.attention),
            log=tuple(self.log),
        )
        self._view_version = self.version
        return self._view

    def _shown_agent(self, view: AgentView) -> AgentView:
        """`view` as shown: redacted (made again only when it or the secrets changed)."""
        generation = self.redactor.generation
        shown = self._shown.get(view.name)
        if shown is not None and shown[0] is view and shown[1] == generation:
            return shown[2]
        redacted = redacted_view(view, self.redactor.text)
        self._shown[view.name] = (view, generation, redacted)
        return redacted
