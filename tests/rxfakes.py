"""Fakes that run the real pipeline (pipeline.dispatch, flow.agent, flow.conversation,
routing) in virtual time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import reactivex
from reactivex import Observable
from reactivex import operators as ops
from reactivex.testing import TestScheduler
from reactivex.testing.reactivetest import ReactiveTest

from ghitwork.bus.changes import Change, ConversationsQueued, EventsRouted, Route
from ghitwork.config import prompt
from ghitwork.config.model import AgentConfig
from ghitwork.flow import pipeline
from ghitwork.flow.agent import Agent
from ghitwork.flow.letters import DeadLetters
from ghitwork.flow.routing import Matcher, Pair, Slots
from ghitwork.model.conversations import OWN, split
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.durations import parse_budget
from ghitwork.model.events import Event
from ghitwork.model.results import RunResult
from ghitwork.run.spec import RunSpec


def agent_config(
    name: str,
    scopes: Sequence[str] = ("team:ghit",),
    kinds: Sequence[str] = ("reply-created",),
    username: str | None = None,
    enabled: bool = True,
    budget: str | None = None,
    run_attempts: int = 3,
    run_backoff: float = 30.0,
    conversations: str = "agent",
    concurrency: int = 1,
) -> AgentConfig:
    return AgentConfig(
        name=name,
        cmd=("true",),
        username=username or name,
        event_scopes=tuple(scopes),
        event_kinds=tuple(kinds),
        workdir=Path("."),
        prompt=prompt.default(),
        enabled=enabled,
        budget=parse_budget(budget) if budget else None,
        run_attempts=run_attempts,
        run_backoff=run_backoff,
        conversations=conversations,
        concurrency=concurrency,
    )


def ev(
    ident: int,
    kind: str = "reply-created",
    scope: str = "thread:teams/ghit/ghit/1",
    actor: str | None = "alice",
) -> Event:
    return Event(ident, kind, actor, (scope,), {"id": ident, "kind": kind})


@dataclass
class Run:
    agent: str
    start: float
    end: float
    ids: tuple[int, ...]
    conversation: str = ""


class FakeAgents:
    """The agents' side of the flow, with runs that take virtual time."""

    def __init__(
        self,
        configs: Iterable[AgentConfig],
        scheduler: TestScheduler,
        duration: Callable[[str, int], float] = lambda agent, n: 50.0,
        exit_code: Callable[[str, int], int] = lambda agent, n: 0,
        result: Callable[[RunResult, int], RunResult] = lambda result, n: result,
    ) -> None:
        configs = list(configs)
        self.letters = DeadLetters()
        self.scheduler = scheduler
        self.matcher = Matcher(configs)
        self.changes: list[Change] = []  # as the status lines tell them (`publish`)
        self.published: list[Change] = []  # as published
        self.agents = {
            c.name: Agent(
                c,
                self.launch,
                self.publish,
                clock=lambda: scheduler.clock,
                schedule=self._schedule,
                letters=self.letters,
            )
            for c in configs
        }
        self.duration = duration
        self.exit_code = exit_code
        self.result = result
        self.runs: list[Run] = []
        self.results: list[RunResult] = []

    def publish(self, change: Change) -> None:
        """A ConversationsQueued is each conversation's AgentChanged in `changes`."""
        self.published.append(change)
        if isinstance(change, ConversationsQueued):
            self.changes.extend(change.each())
        else:
            self.changes.append(change)

    def _schedule(self, delay: float, action: Callable[[], None]) -> Callable[[], None]:
        disposable = self.scheduler.schedule_relative(delay, lambda *_: action())
        return disposable.dispose

    @property
    def dead_letters(self) -> list[DeadLetter]:
        return list(self.letters.kept.values())

    def route(self, event: Event) -> tuple[str, ...]:
        return self.matcher.match(event)

    def routed(self, routes: tuple[Route, ...], pairs: tuple[Pair, ...]) -> None:
        pass

    def split(self, name: str, events: Sequence[Event]) -> list[tuple[str, tuple[Event, ...]]]:
        return self.agents[name].split(events)

    def mailbox(self, agent: str) -> Agent:
        return self.agents[agent]

    def concurrency(self, name: str) -> int:
        config = self.agents[name].config
        return config.concurrency if config.threads else 0

    def launch(self, config: AgentConfig, spec: RunSpec) -> Observable[RunResult]:
        start = self.scheduler.clock
        count = sum(1 for run in self.runs if run.agent == config.name)
        duration = self.duration(config.name, count)
        run = Run(config.name, start, start + duration, spec.event_ids, spec.conversation)
        self.runs.append(run)
        result = self.result(
            RunResult(
                agent=config.name,
                event_ids=run.ids,
                command=("true",),
                started=start,
                ended=start + duration,
                returncode=self.exit_code(config.name, count),
                attempt=spec.attempt,
            ),
            count,
        )
        return reactivex.timer(duration, scheduler=self.scheduler).pipe(ops.map(lambda _: result))

    def delivered(self, agent: str) -> list[int]:
        return [i for run in self.runs if run.agent == agent for i in run.ids]

    def most_concurrent(self) -> int:
        edges = sorted([(r.start, 1) for r in self.runs] + [(r.end, -1) for r in self.runs])
        best = current = 0
        for _, step in edges:
            current += step
            best = max(best, current)
        return best


def run_flow(
    arrivals: Iterable[tuple[float, Event]],
    agents: FakeAgents,
    limit: int = 0,
    until: float = 100_000,
    slots: Slots | None = None,
) -> list[RunResult]:
    """Feed events at virtual times through pipeline.dispatch; return the results seen."""
    scheduler = agents.scheduler
    # Each arrival is one read from the stream (a burst of one event).
    messages = [ReactiveTest.on_next(int(t), [e]) for t, e in sorted(arrivals, key=lambda p: p[0])]
    source = scheduler.create_hot_observable(*messages)
    flow = pipeline.dispatch(source, agents, slots or Slots(limit, cap=agents.concurrency))
    flow.subscribe(agents.results.append, lambda error: agents.results.append(error))  # type: ignore[arg-type]
    scheduler.advance_to(until)
    return agents.results


def events_routed(
    routes: Sequence[Route], threads: Iterable[str] = (), at: float | None = None
) -> EventsRouted:
    """EventsRouted as the pipeline publishes it: with each agent's events per conversation
    (by thread for the agents in `threads`)."""
    per_agent: dict[str, list[Event]] = {}
    for event, agents in routes:
        for name in agents:
            per_agent.setdefault(name, []).append(event)
    threaded = set(threads)
    deliveries = tuple(
        (name, tuple(split(events)) if name in threaded else ((OWN, tuple(events)),))
        for name, events in per_agent.items()
    )
    if at is None:
        return EventsRouted(routes=tuple(routes), deliveries=deliveries)
    return EventsRouted(routes=tuple(routes), deliveries=deliveries, at=at)
