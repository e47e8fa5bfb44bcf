"""Routing in virtual time: matching, batching while busy or queued, the limit, order."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from reactivex.testing import TestScheduler
from rxfakes import FakeAgents, agent_config, ev, run_flow

from ghitwork.bus.changes import AgentChanged, AgentState, RunFinished, RunStarted
from ghitwork.flow import routing
from ghitwork.flow.routing import Matcher, Slots


def test_matching_uses_kind_scope_hierarchy_and_never_the_agents_own_events() -> None:
    matcher = Matcher(
        [
            agent_config("team", scopes=["team:ghit"], kinds=["reply-created", "pull-created"]),
            agent_config("repo", scopes=["repo:teams/ghit/ghit"], kinds=["reply-created"]),
            agent_config("thread", scopes=["thread:teams/ghit/ghit/39"], kinds=["reply-created"]),
            agent_config(
                "mention", scopes=["user:codex"], kinds=["user-mention"], username="codex"
            ),
            agent_config("off", scopes=["team:ghit"], kinds=["reply-created"], enabled=False),
        ]
    )
    assert matcher.match(ev(1, scope="thread:teams/ghit/ghit/39")) == ("team", "repo", "thread")
    assert matcher.match(ev(2, scope="thread:teams/ghit/ghit/40")) == ("team", "repo")
    assert matcher.match(ev(3, scope="repo:teams/ghit/ghit")) == ("team", "repo")
    assert matcher.match(ev(4, kind="pull-created", scope="repo:teams/ghit/ghit")) == ("team",)
    assert matcher.match(ev(5, scope="thread:teams/other/x/1")) == ()
    assert matcher.match(ev(6, kind="user-mention", scope="user:codex")) == ("mention",)
    assert matcher.match(ev(7, kind="user-mention", scope="user:codex", actor="codex")) == ()
    assert matcher.match(ev(8, scope="thread:teams/ghit/ghit/39", actor="repo")) == (
        "team",
        "thread",
    ), "an agent's own event is not delivered to it, but to others"
    assert matcher.match(ev(9, kind="unknown-kind")) == ()


def test_matching_stays_right_and_bounded_over_more_threads_than_it_remembers() -> None:
    """A forge's threads only grow: what the matcher remembers per thread is bounded
    (CACHED), and a thread met again after its cache started over is matched the same."""
    matcher = Matcher(
        [
            agent_config("repo", scopes=["repo:teams/ghit/ghit"], kinds=["reply-created"]),
            agent_config("team", scopes=["team:other"], kinds=["reply-created"]),
            agent_config("one", scopes=["thread:teams/ghit/ghit/7"], kinds=["reply-created"]),
        ]
    )
    threads = routing.CACHED * 2 + 10
    for number in itertools.chain(range(threads), range(threads)):
        got = matcher.match(ev(number, scope=f"thread:teams/ghit/ghit/{number}"))
        assert got == (("repo", "one") if number == 7 else ("repo",)), number
        assert matcher.match(ev(number, scope=f"thread:teams/other/x/{number}")) == ("team",)
        assert matcher.match(ev(number, scope=f"thread:bob/dots/{number}")) == ()
        assert len(matcher._covered) <= routing.CACHED + 1
    assert len(matcher._parents) == 3, "a repo's agents are kept once, not per thread"


def test_the_first_event_of_every_agent_arrives() -> None:
    scheduler = TestScheduler()
    names = [f"a{i}" for i in range(30)]
    agents = FakeAgents(
        [agent_config(n, scopes=[f"thread:teams/ghit/ghit/{i}"]) for i, n in enumerate(names)],
        scheduler,
    )
    arrivals = [(10.0, ev(i + 1, scope=f"thread:teams/ghit/ghit/{i}")) for i in range(30)]
    run_flow(arrivals, agents, limit=3)
    for i, name in enumerate(names):
        assert agents.delivered(name) == [i + 1]


def test_events_that_arrive_while_working_form_the_next_batch() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents([agent_config("a")], scheduler, duration=lambda a, n: 50.0)
    run_flow([(100, ev(1)), (110, ev(2)), (120, ev(3)), (149, ev(4)), (300, ev(5))], agents)
    assert [(r.start, r.ids) for r in agents.runs] == [(100, (1,)), (150, (2, 3, 4)), (300, (5,))]


def test_events_that_arrive_while_queued_for_a_slot_join_the_batch() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents(
        [
            agent_config("a", scopes=["repo:teams/ghit/a"]),
            agent_config("b", scopes=["repo:teams/ghit/b"]),
        ],
        scheduler,
    )
    arrivals = [
        (100, ev(1, scope="repo:teams/ghit/a")),
        (110, ev(2, scope="repo:teams/ghit/b")),
        (120, ev(3, scope="repo:teams/ghit/b")),
        (140, ev(4, scope="repo:teams/ghit/b")),
    ]
    run_flow(arrivals, agents, limit=1)
    assert [(r.agent, r.start, r.ids) for r in agents.runs] == [
        ("a", 100, (1,)),
        ("b", 150, (2, 3, 4)),
    ]
    states = [(c.agent, c.new) for c in agents.changes if isinstance(c, AgentChanged)]
    assert ("b", AgentState.QUEUED) in states, "waiting for a slot is shown as queued"


def test_the_limit_caps_working_agents_and_waiting_agents_start_in_arrival_order() -> None:
    scheduler = TestScheduler()
    configs = [agent_config(f"a{i}", scopes=[f"repo:teams/ghit/{i}"]) for i in range(6)]
    agents = FakeAgents(configs, scheduler, duration=lambda a, n: 30.0)
    arrivals = [(10 + i, ev(i + 1, scope=f"repo:teams/ghit/{i}")) for i in range(6)]
    run_flow(arrivals, agents, limit=2)
    assert agents.most_concurrent() == 2
    assert [r.agent for r in agents.runs] == [f"a{i}" for i in range(6)]
    assert [r.start for r in agents.runs] == [10, 11, 40, 41, 70, 71]


def test_limit_zero_means_no_cap() -> None:
    scheduler = TestScheduler()
    configs = [agent_config(f"a{i}", scopes=[f"repo:teams/ghit/{i}"]) for i in range(8)]
    agents = FakeAgents(configs, scheduler)
    run_flow([(10, ev(i + 1, scope=f"repo:teams/ghit/{i}")) for i in range(8)], agents, limit=0)
    assert agents.most_concurrent() == 8


def test_one_event_goes_to_every_agent_that_matches_it() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents(
        [agent_config("a"), agent_config("b"), agent_config("c", scopes=["user:x"])], scheduler
    )
    run_flow([(10, ev(1)), (20, ev(2))], agents, limit=1)
    assert agents.delivered("a") == [1, 2] and agents.delivered("b") == [1, 2]
    assert agents.delivered("c") == []


def test_each_agent_gets_its_events_once_in_id_order_and_never_two_runs_at_once() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents(
        [agent_config("a"), agent_config("b")], scheduler, duration=lambda a, n: 7.0 + (n % 3) * 11
    )
    run_flow([(t * 3, ev(t)) for t in range(1, 200)], agents, limit=1)
    for name in ("a", "b"):
        assert agents.delivered(name) == list(range(1, 200))
        own = [r for r in agents.runs if r.agent == name]
        assert all(x.end <= y.start for x, y in itertools.pairwise(own))


def test_a_failing_run_is_a_value_and_the_agent_carries_on() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents(
        [agent_config("a", run_attempts=1), agent_config("b")],
        scheduler,
        exit_code=lambda a, n: 1 if a == "a" and n == 0 else 0,
    )
    results = run_flow([(10, ev(1)), (100, ev(2))], agents)
    assert [(r.agent, r.returncode) for r in results] == [("a", 1), ("b", 0), ("a", 0), ("b", 0)]
    finished = [c for c in agents.changes if isinstance(c, RunFinished) and c.agent == "a"]
    assert [c.new for c in finished] == [AgentState.IDLE, AgentState.IDLE]
    assert agents.delivered("a") == [1, 2]
    assert [letter.event_ids for letter in agents.dead_letters] == [[1]]


def test_state_changes_follow_idle_queued_working_idle() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents([agent_config("a")], scheduler)
    run_flow([(10, ev(1))], agents)
    steps = []
    for change in agents.changes:
        if isinstance(change, AgentChanged):
            steps.append((str(change.old), str(change.new)))
        elif isinstance(change, RunStarted):
            steps.append((str(change.old), "working"))
        elif isinstance(change, RunFinished):
            steps.append(("working", str(change.new)))
    assert steps == [("idle", "queued"), ("queued", "working"), ("working", "idle")]


def test_many_agents_each_get_exactly_their_events() -> None:
    scheduler = TestScheduler()
    configs = [agent_config(f"a{i}", scopes=[f"repo:teams/t/{i % 50}"]) for i in range(200)]
    agents = FakeAgents(configs, scheduler, duration=lambda a, n: 5.0)
    arrivals = [(t, ev(t, scope=f"thread:teams/t/{t % 50}/1")) for t in range(1, 500)]
    run_flow(arrivals, agents, limit=10)
    for i in range(200):
        assert agents.delivered(f"a{i}") == [t for t in range(1, 500) if t % 50 == i % 50]
    assert agents.most_concurrent() <= 10


def test_a_raised_limit_starts_waiting_runs_at_once() -> None:
    scheduler = TestScheduler()
    configs = [agent_config(f"a{i}", scopes=[f"repo:teams/ghit/{i}"]) for i in range(3)]
    agents = FakeAgents(configs, scheduler, duration=lambda a, n: 100.0)
    slots = Slots(1)
    scheduler.schedule_absolute(20, lambda *_: slots.set_limit(3))
    run_flow([(10, ev(i + 1, scope=f"repo:teams/ghit/{i}")) for i in range(3)], agents, slots=slots)
    assert [r.start for r in agents.runs] == [10, 20, 20]


def _virtual(scheduler: TestScheduler) -> Callable[[float, Callable[[], None]], Callable[[], None]]:
    def schedule(delay: float, action: Callable[[], None]) -> Callable[[], None]:
        return scheduler.schedule_relative(delay, lambda *_: action()).dispose

    return schedule


def test_runs_wait_while_the_stream_has_a_backlog_and_start_once_it_is_read() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents([agent_config("a")], scheduler, duration=lambda a, n: 5.0)
    slots = Slots(0, schedule=_virtual(scheduler), hold=100.0, settle=2.0)
    # A catch-up: three reads with more waiting behind each; then a read that empties the
    # pipe, but more comes within the settle (a writer slower than us); then caught up.
    for at, more in ((9, True), (19, True), (29, True), (31, False), (32, True), (34, False)):
        scheduler.schedule_absolute(at, lambda *_, more=more: slots.backlog(more))
    run_flow([(10, ev(1)), (20, ev(2)), (30, ev(3)), (33, ev(4)), (50, ev(5))], agents, slots=slots)
    assert [(r.start, r.ids) for r in agents.runs] == [(36, (1, 2, 3, 4)), (50, (5,))]


def test_with_no_hold_on_a_read_that_leaves_nothing_waiting_starts_runs_at_once() -> None:
    """The settle is for a held catch-up only: a live event never waits for it."""
    scheduler = TestScheduler()
    agents = FakeAgents([agent_config("a")], scheduler, duration=lambda a, n: 5.0)
    slots = Slots(0, schedule=_virtual(scheduler), hold=100.0, settle=50.0)
    scheduler.schedule_absolute(10, lambda *_: slots.backlog(False))
    run_flow([(10, ev(1))], agents, slots=slots)
    assert [(r.start, r.ids) for r in agents.runs] == [(10, (1,))]


def test_a_long_backlog_holds_runs_for_at_most_the_hold_at_a_time() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents([agent_config("a")], scheduler, duration=lambda a, n: 5.0)
    slots = Slots(0, schedule=_virtual(scheduler), hold=25.0)
    for at in range(9, 100, 10):  # a read every 10, always with more behind it
        scheduler.schedule_absolute(at, lambda *_: slots.backlog(True))
    run_flow([(t + 1, ev(t // 10 + 1)) for t in range(9, 100, 10)], agents, slots=slots)
    starts = [r.start for r in agents.runs]
    assert starts[:2] == [34, 64], "held 25 from the first read, again from the next one"
    assert agents.delivered("a") == list(range(1, 11))


def test_with_a_limit_a_held_run_still_waits_its_turn() -> None:
    scheduler = TestScheduler()
    configs = [agent_config(f"a{i}", scopes=[f"repo:teams/ghit/{i}"]) for i in range(2)]
    agents = FakeAgents(configs, scheduler, duration=lambda a, n: 10.0)
    slots = Slots(1, schedule=_virtual(scheduler), hold=100.0, settle=0.0)
    scheduler.schedule_absolute(9, lambda *_: slots.backlog(True))
    scheduler.schedule_absolute(15, lambda *_: slots.backlog(False))
    run_flow(
        [(10, ev(1, scope="repo:teams/ghit/0")), (11, ev(2, scope="repo:teams/ghit/1"))],
        agents,
        slots=slots,
    )
    assert [(r.agent, r.start) for r in agents.runs] == [("a0", 15), ("a1", 25)]
