"""Properties of the flow over random arrivals, subscriptions, run durations and limits."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex.testing import TestScheduler
from rxfakes import FakeAgents, agent_config, ev, run_flow

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


@settings(max_examples=150, deadline=None)
@given(
    agents_strategy,
    events_strategy,
    st.lists(st.integers(1, 60), min_size=1, max_size=8),
    st.integers(0, 4),
)
def test_runs_never_overlap_respect_the_limit_and_deliver_every_match_once_in_order(
    specs: list[tuple[list[str], list[str]]],
    arrivals: list[tuple[int, str, str, str | None]],
    durations: list[int],
    limit: int,
) -> None:
    configs = [agent_config(f"a{i}", scopes=s, kinds=k) for i, (s, k) in enumerate(specs)]
    scheduler = TestScheduler()
    agents = FakeAgents(
        configs, scheduler, duration=lambda a, n: float(durations[(n + len(a)) % len(durations)])
    )
    events, time = [], 1
    for ident, (gap, kind, scope, actor) in enumerate(arrivals, start=1):
        time += gap
        events.append((float(time), ev(ident, kind=kind, scope=scope, actor=actor)))
    run_flow(events, agents, limit=limit, until=time + 100_000)

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
    # Independent of ghitwork.scopes: the hierarchy spelled out for this strategy's scopes.
    parents = {
        "thread:teams/a/r1/1": ["repo:teams/a/r1", "team:a"],
        "thread:teams/a/r1/2": ["repo:teams/a/r1", "team:a"],
        "thread:teams/a/r2/1": ["repo:teams/a/r2", "team:a"],
        "repo:teams/a/r2": ["team:a"],
    }
    return [scope, *parents.get(scope, [])]
