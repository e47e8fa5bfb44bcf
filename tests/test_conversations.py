"""SPEC §12 in virtual time: conversations of one agent, each single flight, under the
agent's `concurrency` and the global `limit`, through the real pipeline (rxfakes)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from reactivex import Observable
from reactivex.subject import Subject
from reactivex.testing import TestScheduler
from reactivex.testing.reactivetest import ReactiveTest
from reactivex.testing.recorded import Recorded
from rxfakes import FakeAgents, Run, agent_config, ev, run_flow

from ghitwork.bus.changes import AgentChanged, AgentState, ConversationsQueued, RunStarted
from ghitwork.flow import pipeline
from ghitwork.flow.routing import Pair, Slots
from ghitwork.model.conversations import conversation_of, slug, split
from ghitwork.model.events import Event

T1, T2, T3 = "thread:teams/ghit/ghit/1", "thread:teams/ghit/ghit/2", "thread:teams/ghit/ghit/3"


def threads(concurrency: int = 1, **more: object) -> FakeAgents:
    return FakeAgents(
        [agent_config("a", conversations="thread", concurrency=concurrency)],
        TestScheduler(),
        **more,  # type: ignore[arg-type]
    )


def overlap(runs: list[Run]) -> int:
    edges = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs])
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


def test_batches_never_mix_threads_and_threads_run_side_by_side() -> None:
    agents = threads(concurrency=2)
    run_flow([(10, ev(1, scope=T1)), (11, ev(2, scope=T2)), (12, ev(3, scope=T1))], agents)
    assert [(r.conversation, r.ids, r.start) for r in agents.runs] == [
        (T1, (1,), 10),
        (T2, (2,), 11),
        (T1, (3,), 60),  # single flight per conversation: after T1's first run
    ]


def test_a_burst_queues_its_conversations_in_one_change_before_any_of_them_runs() -> None:
    """Thread mode's catch-up queues thousands of conversations a read: one change per agent
    and read, each conversation in it as its AgentChanged would say, and then the runs."""
    agents = threads(concurrency=2)
    burst = [ev(1, scope=T1), ev(2, scope=T2), ev(3, scope=T1), ev(4, scope=T3)]
    source = agents.scheduler.create_hot_observable(ReactiveTest.on_next(10, burst))
    pipeline.dispatch(source, agents, Slots(0, cap=agents.concurrency)).subscribe()
    agents.scheduler.advance_to(10)
    published = [c for c in agents.published if isinstance(c, ConversationsQueued | RunStarted)]
    assert isinstance(published[0], ConversationsQueued)
    assert published[0].queued == (
        (T1, AgentState.IDLE, 2),
        (T2, AgentState.IDLE, 1),
        (T3, AgentState.IDLE, 1),
    )
    assert [(c.conversation, c.event_ids) for c in published[1:] if isinstance(c, RunStarted)] == [
        (T1, (1, 3)),
        (T2, (2,)),
    ], "then the runs, two at once (concurrency 2), the longest waiting first"
    queued = [(c.conversation, c.old, c.queue) for c in published[0].each()]
    assert queued == [(T1, AgentState.IDLE, 2), (T2, AgentState.IDLE, 1), (T3, AgentState.IDLE, 1)]


def test_agent_mode_keeps_one_conversation_with_every_thread_in_its_batch() -> None:
    agents = FakeAgents([agent_config("a")], TestScheduler())
    run_flow([(10, ev(1, scope=T1)), (11, ev(2, scope=T2)), (12, ev(3, scope=T1))], agents)
    assert [(r.conversation, r.ids) for r in agents.runs] == [("", (1,)), ("", (2, 3))]


def test_concurrency_caps_one_agent_and_the_longest_waiting_thread_goes_first() -> None:
    agents = threads(concurrency=1, duration=lambda a, n: 50.0)
    arrivals = [(10, ev(1, scope=T1)), (20, ev(2, scope=T3)), (30, ev(3, scope=T2))]
    arrivals.append((40, ev(4, scope=T1)))  # T1 again: it waits behind T3 and T2
    run_flow(arrivals, agents)
    assert [(r.conversation, r.ids, r.start) for r in agents.runs] == [
        (T1, (1,), 10),
        (T3, (2,), 60),
        (T2, (3,), 110),
        (T1, (4,), 160),
    ]


def test_the_global_limit_caps_every_conversation_of_every_agent() -> None:
    configs = [
        agent_config("a", conversations="thread", concurrency=4),
        agent_config("b", conversations="thread", concurrency=4),
    ]
    agents = FakeAgents(configs, TestScheduler(), duration=lambda a, n: 100.0)
    scopes = [T1, T2, T3, "thread:teams/ghit/ghit/4"]
    arrivals = [(10 + i, ev(i + 1, scope=scopes[i % 4])) for i in range(8)]
    run_flow(arrivals, agents, limit=3)
    assert overlap(agents.runs) == 3
    assert sorted(i for r in agents.runs for i in r.ids) == sorted([*range(1, 9)] * 2)


def test_an_idle_conversation_is_dropped_and_comes_back_on_its_next_event() -> None:
    agents = threads(concurrency=2)
    run_flow([(10, ev(1, scope=T1)), (11, ev(2, scope=T2))], agents, until=200)
    assert agents.agents["a"].conversations == {}, "idle and empty: dropped"
    agents.scheduler.advance_to(300)
    run_flow([(400, ev(3, scope=T1))], agents, until=1000)
    assert [(r.conversation, r.ids) for r in agents.runs][-1] == (T1, (3,))


def test_a_session_outlives_its_dropped_conversation() -> None:
    agents = threads()
    agents.result = lambda result, n: replace(result, session_id=f"s-{result.event_ids[0]}")
    run_flow([(10, ev(1, scope=T1)), (11, ev(2, scope=T2))], agents, until=500)
    agent = agents.agents["a"]
    assert agent.conversations == {}
    assert agent.sessions == {T1: "s-1", T2: "s-2"}


def test_a_failing_thread_retries_alone_while_the_others_go_on() -> None:
    agents = threads(concurrency=2, exit_code=lambda a, n: 1 if n == 0 else 0)
    run_flow([(10, ev(1, scope=T1)), (11, ev(2, scope=T2)), (70, ev(3, scope=T2))], agents)
    by_thread = defaultdict(list)
    for r in agents.runs:
        by_thread[r.conversation].append((r.ids, r.start))
    assert by_thread[T1] == [((1,), 10), ((1,), 90)]  # retried after run_backoff (30)
    assert by_thread[T2] == [((2,), 11), ((3,), 70)]
    retrying = [
        c for c in agents.changes if isinstance(c, AgentChanged) and c.new.value == "queued"
    ]
    assert {c.conversation for c in retrying} == {T1, T2}


def test_the_budget_is_the_agents_across_its_conversations() -> None:
    agents = FakeAgents(
        [agent_config("a", conversations="thread", concurrency=4, budget="2/1000")],
        TestScheduler(),
        duration=lambda a, n: 10.0,
    )
    run_flow([(10, ev(1, scope=T1)), (11, ev(2, scope=T2)), (12, ev(3, scope=T3))], agents)
    starts = sorted(r.start for r in agents.runs)
    assert starts[:2] == [10, 11] and starts[2] >= 1010, starts


def test_run_changes_name_their_conversation() -> None:
    agents = threads(concurrency=2)
    run_flow([(10, ev(1, scope=T1)), (11, ev(2, scope=T2))], agents)
    started = [c for c in agents.changes if isinstance(c, RunStarted)]
    assert [(c.conversation, c.event_ids) for c in started] == [(T1, (1,)), (T2, (2,))]


def test_events_without_a_thread_go_to_the_agents_own_conversation() -> None:
    agents = threads(concurrency=2)
    run_flow([(10, ev(1, scope="team:ghit")), (11, ev(2, scope=T1))], agents)
    assert [(r.conversation, r.ids) for r in agents.runs] == [("", (1,)), (T1, (2,))]


def test_conversation_of_split_and_slug() -> None:
    two = Event(2, "k", None, ("repo:teams/ghit/ghit", T2, T1), {})
    assert conversation_of(two) == T2
    events = [ev(1, scope=T1), ev(2, scope=T2), ev(3, scope=T1)]
    assert [(k, [e.id for e in part]) for k, part in split(events)] == [(T1, [1, 3]), (T2, [2])]
    assert slug(T1) == "teams-ghit-ghit-1"
    assert slug("") == "_agent"
    assert slug("thread:../../etc/9") == "_.-..-etc-9"
    assert "/" not in slug("thread:a/b c/$x/1") and slug("thread:a/b c/$x/1") == "a-b_c-_x-1"


# -- the property: random interleavings across threads, with failures


@settings(max_examples=120, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 5)), min_size=1, max_size=50
    ),  # (time, thread)
    st.integers(1, 4),  # concurrency
    st.integers(0, 5),  # limit
    st.lists(st.integers(1, 80), min_size=1, max_size=6),  # run durations
    st.sets(st.integers(0, 40), max_size=10),  # which runs (by number) fail
)
def test_each_threads_events_are_delivered_once_in_order_with_single_flight_and_caps(
    arrivals: list[tuple[int, int]],
    concurrency: int,
    limit: int,
    durations: list[int],
    failing: set[int],
) -> None:
    scheduler = TestScheduler()
    config = agent_config(
        "a", conversations="thread", concurrency=concurrency, run_attempts=100, run_backoff=7
    )

    def exit_code(agent: str, n: int) -> int:
        return 1 if n in failing else 0

    agents = FakeAgents(
        [config],
        scheduler,
        duration=lambda a, n: float(durations[n % len(durations)]),
        exit_code=exit_code,
    )
    scope = ["team:ghit", *(f"thread:teams/ghit/ghit/{i}" for i in range(1, 6))]
    # ids grow with time, as a stream's do
    events = [(t, ev(i + 1, scope=scope[thread])) for i, (t, thread) in enumerate(sorted(arrivals))]
    run_flow(events, agents, limit=limit, slots=Slots(limit, cap=agents.concurrency), until=10**6)
    runs = agents.runs
    # never two runs of one conversation at once; never more than `concurrency` of the agent
    for conversation in {r.conversation for r in runs}:
        assert overlap([r for r in runs if r.conversation == conversation]) <= 1
    assert overlap(runs) <= concurrency
    if limit:
        assert overlap(runs) <= limit
    # batches never mix conversations
    thread_of = {e.id: conversation_of(e) for _, e in events}
    for r in runs:
        assert {thread_of[i] for i in r.ids} == {r.conversation}
    # each thread's events: delivered by a successful run once each, in id order
    ok = [r for n, r in enumerate(runs) if n not in failing]
    for conversation in set(thread_of.values()):
        ids = [i for r in ok if r.conversation == conversation for i in r.ids]
        assert ids == sorted(i for i, c in thread_of.items() if c == conversation)
    assert agents.agents["a"].conversations == {}


def reads(
    events: list[tuple[int, Event]], when: Callable[[int], bool]
) -> list[Recorded[Sequence[Event]]]:
    """Each event one read from the stream, at its time, for those `when` keeps."""
    return [ReactiveTest.on_next(t, [e]) for t, e in events if when(t)]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 5)), min_size=1, max_size=40),
    st.integers(1, 4),  # concurrency
    st.lists(st.integers(1, 80), min_size=1, max_size=6),  # run durations
    st.sets(st.integers(0, 30), max_size=8),  # which runs (by number) fail
    st.integers(1, 450),  # when ghit-work is killed (-9) and starts again
)
def test_across_a_crash_every_threads_events_are_delivered_in_order_single_flight(
    arrivals: list[tuple[int, int]],
    concurrency: int,
    durations: list[int],
    failing: set[int],
    crash: int,
) -> None:
    """What a restart does, in virtual time: the crashed flow's runs end at the crash (the
    next start ends them first), each conversation's queue and batch in flight (what the
    journal holds) are injected first into a new flow, redelivered; later events follow."""
    scheduler = TestScheduler()
    config = agent_config(
        "a", conversations="thread", concurrency=concurrency, run_attempts=100, run_backoff=7
    )
    scope = ["team:ghit", *(f"thread:teams/ghit/ghit/{i}" for i in range(1, 6))]
    events = [(t, ev(i + 1, scope=scope[thread])) for i, (t, thread) in enumerate(sorted(arrivals))]

    def agents_of(offset: int) -> FakeAgents:
        return FakeAgents(
            [config],
            scheduler,
            duration=lambda a, n: float(durations[(n + offset) % len(durations)]),
            exit_code=lambda a, n: 1 if n + offset in failing else 0,
        )

    before = agents_of(0)
    first = pipeline.dispatch(
        scheduler.create_hot_observable(*reads(events, lambda t: t < crash)),
        before,
        Slots(0, cap=before.concurrency),
    ).subscribe(before.results.append)
    scheduler.advance_to(crash)
    first.dispose()  # kill -9: nothing more of the first flow happens
    saved = [
        (name, ((key, tuple(sorted([*c.batch, *c.pending], key=lambda e: e.id))),))
        for name, agent in before.agents.items()
        for key, c in agent.conversations.items()
        if c.batch or c.pending
    ]
    after = agents_of(len(before.runs))
    injected: Subject[Pair] = Subject()
    pipeline.dispatch(
        scheduler.create_hot_observable(*reads(events, lambda t: t > crash)),
        after,
        Slots(0, cap=after.concurrency),
        injected,
    ).subscribe(after.results.append)
    for pair in saved:
        injected.on_next(pair)
    late = [(t, e) for t, e in events if t == crash]
    for _, e in late:  # read by the new instance (its cursor is before them)
        injected.on_next(("a", ((conversation_of(e), (e,)),)))
    scheduler.advance_to(10**6)
    # the crashed flow's runs end at the crash: none of them counts as done if it was cut
    cut = [Run(r.agent, r.start, min(r.end, crash), r.ids, r.conversation) for r in before.runs]
    runs = cut + after.runs
    for conversation in {r.conversation for r in runs}:
        assert overlap([r for r in runs if r.conversation == conversation]) <= 1
    assert overlap(runs) <= concurrency
    done = [r for n, r in enumerate(before.runs) if n not in failing and r.end <= crash] + [
        r for n, r in enumerate(after.runs) if n + len(before.runs) not in failing
    ]
    thread_of = {e.id: conversation_of(e) for _, e in events}
    for conversation in set(thread_of.values()):
        ids = [i for r in done if r.conversation == conversation for i in r.ids]
        expected = sorted(i for i, c in thread_of.items() if c == conversation)
        # every event done once, in order: a batch cut by the crash is not done, and comes
        # again first
        assert ids == expected


def test_thousands_of_runs_falling_through_at_once_do_not_stack_up() -> None:
    """A stop with thousands of conversations waiting for a slot: each run, once started,
    falls through at once (its conversation is stopping). Slots goes on in a loop rather
    than a call per run (it overflowed the stack: RecursionError, exit 4)."""
    slots = Slots(1)
    requests: Subject[tuple[str, tuple[Callable[[], Observable[int]], ...]]] = Subject()
    first: Subject[int] = Subject()
    seen: list[int] = []
    done: list[bool] = []
    requests.pipe(slots.merge()).subscribe(on_completed=lambda: done.append(True))
    requests.on_next(("a", (lambda: first,)))  # holds the only slot

    def run(n: int) -> Callable[[], Observable[int]]:
        def start() -> Observable[int]:
            seen.append(n)
            return reactivex.empty()  # as a conversation that is stopping gives

        return start

    for n in range(0, 20_000, 4):  # as agents ask: several runs at once
        requests.on_next((f"t{n % 7}", tuple(run(i) for i in range(n, n + 4))))
    assert slots.waiting == 20_000
    requests.on_completed()
    first.on_completed()  # the slot frees: every waiting run starts and ends in turn
    assert len(seen) == 20_000 and done == [True] and slots.waiting == 0
    assert slots.active == 0
