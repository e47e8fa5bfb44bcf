"""Properties of the flow over random arrivals, subscriptions, run durations and limits."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable
from reactivex.testing import TestScheduler
from rxfakes import FakeAgents, agent_config, ev, run_flow

from ghitwork.config.model import AgentConfig
from ghitwork.flow.routing import Matcher, Slots
from ghitwork.model.events import Event
from ghitwork.model.results import RunResult
from ghitwork.run.spec import RunSpec

SCOPES = ["team:a", "repo:teams/a/r1", "repo:teams/a/r2", "thread:teams/a/r1/1", "user:u"]
EVENT_SCOPES = [
    "thread:teams/a/r1/1",
    "thread:teams/a/r1/2",
    "thread:teams/a/r2/1",
    "repo:teams/a/r2",
    "user:u",
    "thread:teams/b/x/1",
]
KINDS = ["k1", "k2", "k3"]
ACTORS = ["a0", "a1", "someone", None]

agents_strategy = st.lists(
    st.tuples(
        st.lists(st.sampled_from(SCOPES), min_size=1, max_size=2, unique=True),
        st.lists(st.sampled_from(KINDS), min_size=1, max_size=2, unique=True),
    ),
    min_size=1,
    max_size=5,
)
events_strategy = st.lists(
    st.tuples(
        st.integers(1, 30),
        st.sampled_from(KINDS),
        st.sampled_from(EVENT_SCOPES),
        st.sampled_from(ACTORS),
    ),
    max_size=60,
)


class HoldAware(FakeAgents):
    slots: Slots | None = None

    def launch(self, config: AgentConfig, spec: RunSpec) -> Observable[RunResult]:
        assert self.slots is None or not self.slots.held, "a run started during a hold"
        return super().launch(config, spec)


@settings(max_examples=150, deadline=None)
@given(
    agents_strategy,
    events_strategy,
    st.lists(st.integers(1, 60), min_size=1, max_size=8),
    st.integers(0, 4),
    st.lists(st.tuples(st.integers(0, 1500), st.booleans()), max_size=12),
    st.integers(1, 200),
    st.integers(0, 30),
)
def test_runs_never_overlap_respect_the_limit_and_deliver_every_match_once_in_order(
    specs: list[tuple[list[str], list[str]]],
    arrivals: list[tuple[int, str, str, str | None]],
    durations: list[int],
    limit: int,
    backlog: list[tuple[int, bool]],
    hold: int,
    settle: int,
) -> None:
    """...whatever the stream's backlog does meanwhile (catch-up holds and their settles,
    Slots.backlog)."""
    configs = [agent_config(f"a{i}", scopes=s, kinds=k) for i, (s, k) in enumerate(specs)]
    scheduler = TestScheduler()
    agents = HoldAware(
        configs, scheduler, duration=lambda a, n: float(durations[(n + len(a)) % len(durations)])
    )

    def schedule(delay: float, action: Callable[[], None]) -> Callable[[], None]:
        return scheduler.schedule_relative(delay, lambda *_: action()).dispose

    slots = agents.slots = Slots(limit, schedule=schedule, hold=float(hold), settle=float(settle))
    for at, more in backlog:
        scheduler.schedule_absolute(at, lambda *_, more=more: slots.backlog(more))
    events, time = [], 1
    for ident, (gap, kind, scope, actor) in enumerate(arrivals, start=1):
        time += gap
        events.append((float(time), ev(ident, kind=kind, scope=scope, actor=actor)))
    run_flow(events, agents, until=time + 100_000, slots=slots)

    if limit:
        assert agents.most_concurrent() <= limit
    for config in configs:
        own = [r for r in agents.runs if r.agent == config.name]
        assert all(x.end <= y.start for x, y in itertools.pairwise(own)), "two runs at once"
        assert all(run.ids for run in own), "no empty batch"
        expected = [
            e.id
            for _, e in events
            if e.kind in config.event_kinds
            and e.actor != config.username
            and any(cover in config.event_scopes for cover in _covering(e.scopes[0]))
        ]
        assert agents.delivered(config.name) == expected


def _covering(scope: str) -> list[str]:
    # Independent of ghitwork.model.scopes: the hierarchy spelled out for this strategy's scopes.
    parents = {
        "thread:teams/a/r1/1": ["repo:teams/a/r1", "team:a"],
        "thread:teams/a/r1/2": ["repo:teams/a/r1", "team:a"],
        "thread:teams/a/r2/1": ["repo:teams/a/r2", "team:a"],
        "repo:teams/a/r2": ["team:a"],
    }
    return [scope, *parents.get(scope, [])]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from(SCOPES), min_size=1, max_size=3, unique=True),
            st.lists(st.sampled_from(KINDS), min_size=1, max_size=2, unique=True),
            st.sampled_from(["a0", "a1", "someone"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    ),
    st.lists(
        st.tuples(
            st.sampled_from([*KINDS, "unknown"]),
            st.lists(st.sampled_from(EVENT_SCOPES), max_size=3),
            st.sampled_from(ACTORS),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_matching_is_the_definition_for_any_agents_and_events(
    specs: list[tuple[list[str], list[str], str, bool]],
    events: list[tuple[str, list[str], str | None]],
) -> None:
    """Kind, a covering scope (any of the event's), not the agent's own: in config order."""
    configs = [
        agent_config(f"a{i}", scopes=s, kinds=k, username=user, enabled=on)
        for i, (s, k, user, on) in enumerate(specs)
    ]
    matcher = Matcher(configs)
    for ident, (kind, scopes, actor) in enumerate(events * 2, start=1):  # twice: cached
        event = Event(ident, kind, actor, tuple(scopes), {})
        expected = tuple(
            c.name
            for c in configs
            if c.enabled
            and kind in c.event_kinds
            and actor != c.username
            and any(cover in c.event_scopes for scope in scopes for cover in _covering(scope))
        )
        assert matcher.match(event) == expected
