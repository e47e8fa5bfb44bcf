"""Retries, rate limits and dead letters through the real pipeline, in virtual time."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from reactivex.testing import TestScheduler
from rxfakes import FakeAgents, Run, agent_config, ev, run_flow

from ghitwork.bus.changes import AgentState, RunFinished, RunStarted
from ghitwork.model.results import RunResult


def runs_of(agents: FakeAgents, name: str = "a") -> list[Run]:
    return [run for run in agents.runs if run.agent == name]


def test_a_failed_batch_runs_again_after_the_backoff_with_later_events_joined() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents(
        [agent_config("a", run_attempts=3, run_backoff=100)],
        scheduler,
        duration=lambda a, n: 10,
        exit_code=lambda a, n: 1 if n < 2 else 0,
    )
    run_flow([(10, ev(1)), (50, ev(2)), (200, ev(3))], agents)
    assert [(r.start, r.ids) for r in runs_of(agents)] == [
        (10, (1,)),
        (120, (1, 2)),  # 10 + 10 s run + 100 s backoff; event 2 joined
        (330, (1, 2, 3)),  # + 10 + 200 (doubled)
    ]
    started = [c for c in agents.changes if isinstance(c, RunStarted)]
    assert [c.attempt for c in started] == [1, 2, 3]
    assert [c.redelivered for c in started] == [False, True, True], "it may have done a part"
    finished = [c for c in agents.changes if isinstance(c, RunFinished)]
    assert [c.new for c in finished] == [AgentState.RETRYING, AgentState.RETRYING, AgentState.IDLE]
    assert finished[0].retry_at == 120 and finished[1].retry_at == 330
    assert agents.dead_letters == []


def test_the_last_failed_attempt_makes_a_dead_letter_and_the_agent_goes_on() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents(
        [agent_config("a", run_attempts=2, run_backoff=5)],
        scheduler,
        duration=lambda a, n: 1,
        exit_code=lambda a, n: 1 if n < 2 else 0,
    )
    run_flow([(10, ev(1)), (100, ev(2))], agents)
    assert [r.ids for r in runs_of(agents)] == [(1,), (1,), (2,)]
    assert [(d.event_ids, d.attempts, d.exit_status) for d in agents.dead_letters] == [([1], 2, 1)]
    last = [c for c in agents.changes if isinstance(c, RunFinished)][1]
    assert last.dead_letter is agents.dead_letters[0] and last.new is AgentState.IDLE


def test_a_rate_limited_run_waits_its_seconds_without_using_an_attempt() -> None:
    scheduler = TestScheduler()

    def rate_limited(result: RunResult, n: int) -> RunResult:
        return replace(result, rate_limited=True, retry_after=500.0) if n < 3 else result

    agents = FakeAgents(
        [agent_config("a", run_attempts=1, run_backoff=5)],
        scheduler,
        duration=lambda a, n: 1,
        exit_code=lambda a, n: 1 if n < 3 else 0,
        result=rate_limited,
    )
    run_flow([(10, ev(1))], agents)
    assert [r.start for r in runs_of(agents)] == [10, 511, 1012, 1513]
    started = [c.attempt for c in agents.changes if isinstance(c, RunStarted)]
    assert started == [1, 1, 1, 1], "a rate limit never uses up an attempt"
    states = [c.new for c in agents.changes if isinstance(c, RunFinished)]
    assert states[:3] == [AgentState.RATE_LIMITED] * 3 and agents.dead_letters == []


def test_a_retry_waits_outside_the_limit_so_others_run_meanwhile() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents(
        [
            agent_config("a", scopes=["repo:teams/ghit/a"], run_backoff=100),
            agent_config("b", scopes=["repo:teams/ghit/b"]),
        ],
        scheduler,
        duration=lambda a, n: 5,
        exit_code=lambda a, n: 1 if a == "a" and n == 0 else 0,
    )
    arrivals = [(10, ev(1, scope="repo:teams/ghit/a")), (20, ev(2, scope="repo:teams/ghit/b"))]
    run_flow(arrivals, agents, limit=1)
    assert [r.start for r in runs_of(agents, "b")] == [20], "b is not held up by a's backoff"
    assert [r.start for r in runs_of(agents, "a")] == [10, 115]


def test_every_attempt_counts_against_the_run_budget() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents(
        [agent_config("a", run_attempts=3, run_backoff=1, budget="2/1000")],
        scheduler,
        duration=lambda a, n: 1,
        exit_code=lambda a, n: 1 if n == 0 else 0,
    )
    run_flow([(10, ev(1)), (50, ev(2))], agents)
    assert [(r.start, r.ids) for r in runs_of(agents)] == [(10, (1,)), (12, (1,)), (1010, (2,))]


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=30),
    st.lists(st.sampled_from(["ok", "fail", "rate"]), min_size=1, max_size=12),
    st.integers(1, 3),
    st.integers(0, 2),
)
def test_retries_keep_each_agents_order_and_single_flight(
    gaps: list[int], outcomes: list[str], attempts: int, limit: int
) -> None:
    scheduler = TestScheduler()

    def outcome(agent: str, n: int) -> str:
        return outcomes[(n + len(agent)) % len(outcomes)]

    def shape(result: RunResult, n: int) -> RunResult:
        if outcome(result.agent, n) == "rate":
            return replace(result, returncode=1, rate_limited=True, retry_after=7.0)
        return result

    configs = [
        agent_config(name, run_attempts=attempts, run_backoff=3) for name in ("a", "bb", "ccc")
    ]
    agents = FakeAgents(
        configs,
        scheduler,
        duration=lambda a, n: float(1 + n % 4),
        exit_code=lambda a, n: 0 if outcome(a, n) == "ok" else 1,
        result=shape,
    )
    arrivals, time = [], 0
    for ident, gap in enumerate(gaps, start=1):
        time += gap
        arrivals.append((float(time), ev(ident)))
    # Long enough for every batch to end one way or the other, however often it is retried.
    if "ok" not in outcomes and "fail" not in outcomes:
        return  # only rate limits: retried forever by design, nothing to settle
    run_flow(arrivals, agents, limit=limit, until=time + 1_000_000)
    expected = list(range(1, len(gaps) + 1))
    for name in ("a", "bb", "ccc"):
        own = runs_of(agents, name)
        assert all(x.end <= y.start for x, y in itertools.pairwise(own)), "two runs at once"
        assert all(list(run.ids) == sorted(run.ids) for run in own), "a batch out of order"
        settled: list[int] = []  # events in the order their batch was done or dead-lettered
        for run, change in zip(
            own,
            [c for c in agents.changes if isinstance(c, RunFinished) and c.agent == name],
            strict=True,
        ):
            if change.retry is None:
                settled += list(run.ids)
        assert settled == expected, "each event settles once, in id order"
