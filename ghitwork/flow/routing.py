"""Routing stages of the pipeline: match, fan out, batch while busy, cap concurrency.

Each stage is a plain Rx operator so `pipeline.py` reads as the whole data flow, and each is
tested on its own in virtual time.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, SingleAssignmentDisposable

from ghitwork.bus.changes import Delivery, Route
from ghitwork.config.model import AgentConfig
from ghitwork.flow.accounts import Schedule
from ghitwork.flow.agent import call_later
from ghitwork.model.events import Event
from ghitwork.model.scopes import covering

_T = TypeVar("_T")
Burst = Sequence[Event]  # the events of one read from the stream, in id order
Part = tuple[str, tuple[Event, ...]]  # a conversation (SPEC §12) and its events of one burst
Pair = Delivery  # an agent, and its conversations' events of one burst
# A deferred run, waiting for its slot: what makes the run's observable once the slot is
# granted (a plain callable, not `reactivex.defer`: thread mode's catch-up asks for tens of
# thousands, and an Observable each cost a fifth of that catch-up's time)
Run = Callable[[], Observable[_T]]
# An agent's deferred runs, in the order they were asked for: its conversations one read
# queued go as one request (one Rx hop, not one each)
Request = tuple[str, tuple[Run[_T], ...]]
Split = Callable[[str, Sequence[Event]], Iterable[tuple[str, tuple[Event, ...]]]]
# Entries per Matcher cache; past it the cache starts again. Each event scope remembered costs
# ~130 bytes, and a forge's threads only grow: 16,384 bounds it at ~2 MB, and a thread's
# scope found again after a restart of the cache costs ~0.3 us (its repo's agents are kept).
CACHED = 16_384
HOLD = 0.25  # seconds runs wait, at most, while a catch-up is read (Slots.backlog)
SETTLE = 0.01  # seconds a held catch-up's empty pipe must stay empty before runs start


class Matcher:
    """Which enabled agents receive an event.

    Built once per config. Each agent is a bit: a kind, a scope (with the scopes above it)
    and an actor each map to the agents they concern, so matching an event is a few dict
    lookups and integer ANDs, whatever the number of agents.
    """

    def __init__(self, agents: Iterable[AgentConfig]) -> None:
        enabled = [agent for agent in agents if agent.enabled]
        self.names = tuple(agent.name for agent in enabled)  # config order: bit i is names[i]
        self.by_kind: dict[str, int] = {}
        self.by_scope: dict[str, int] = {}  # the scopes agents subscribed to, as written
        self.own: dict[str, int] = {}  # username -> its agents (never sent their own events)
        for index, agent in enumerate(enabled):
            bit = 1 << index
            for kind in agent.event_kinds:
                self.by_kind[kind] = self.by_kind.get(kind, 0) | bit
            for scope in agent.event_scopes:
                self.by_scope[scope] = self.by_scope.get(scope, 0) | bit
            self.own[agent.username] = self.own.get(agent.username, 0) | bit
        self._covered: dict[str, int] = {}  # event scope -> agents covering it (a cache)
        # "thread:L" -> the agents covering every thread of repo L (one per repo, a cache)
        self._parents: dict[str, int] = {}
        self._named: dict[int, tuple[str, ...]] = {0: ()}  # agents -> their names (a cache)

    def match(self, event: Event) -> tuple[str, ...]:
        """The agents for `event`, in config order; never the event's own actor."""
        found = self.by_kind.get(event.kind, 0)
        if not found:
            return ()
        covered = 0
        for scope in event.scopes:
            agents = self._covered.get(scope)
            covered |= self._cover(scope) if agents is None else agents
        found &= covered
        if found and event.actor is not None:
            found &= ~self.own.get(event.actor, 0)
        names = self._named.get(found)
        if names is None:
            names = tuple(name for index, name in enumerate(self.names) if found >> index & 1)
            if len(self._named) > CACHED:
                self._named.clear()
            self._named[found] = names
        return names

    def _cover(self, scope: str) -> int:
        """Every agent subscribed to `scope` or to a scope above it. A thread's scope is
        looked up in its repo's (a few dict lookups): what is remembered per thread is an int."""
        slash = scope.rfind("/") if scope.startswith("thread:") else -1
        if slash < 0:
            agents = self._subscribed(covering(scope))
        else:
            parent = scope[:slash]
            above = self._parents.get(parent)
            if above is None:
                if len(self._parents) > CACHED:
                    self._parents.clear()
                above = self._parents[parent] = self._subscribed(covering(scope)[1:])
            agents = above | self.by_scope.get(scope, 0)
        if len(self._covered) > CACHED:
            self._covered.clear()
        self._covered[scope] = agents
        return agents

    def _subscribed(self, scopes: Iterable[str]) -> int:
        agents = 0
        for scope in scopes:
            agents |= self.by_scope.get(scope, 0)
        return agents


def fan_out(
    match: Callable[[Event], tuple[str, ...]],
    routed: Callable[[tuple[Route, ...], tuple[Pair, ...]], None],
    split: Split,
) -> Callable[[Observable[Burst]], Observable[Pair]]:
    """A burst of events -> one (agent, ((conversation, its events), ...)) pair per agent
    that matches any of them (`split` says which conversations an agent's events belong to).

    The stream is handled a read at a time, not an event at a time: a catch-up of 100,000
    events costs a few thousand Rx hops instead of hundreds of thousands, and each
    conversation gets the events of one read as one batch. No observable is made per event.
    """

    def operator(source: Observable[Burst]) -> Observable[Pair]:
        def subscribe(
            observer: abc.ObserverBase[Pair], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def on_next(burst: Burst) -> None:
                routes = tuple(zip(burst, map(match, burst), strict=True))
                per_agent: dict[str, list[Event]] = {}
                for event, names in routes:
                    for name in names:
                        events = per_agent.get(name)
                        if events is None:
                            per_agent[name] = [event]
                        else:
                            events.append(event)
                pairs = tuple([(name, tuple(split(name, e))) for name, e in per_agent.items()])
                routed(routes, pairs)
                for pair in pairs:
                    observer.on_next(pair)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return Observable(subscribe)

    return operator


class Mailbox(Protocol):
    """An agent's batching state (flow/agent.py, one state machine per conversation in
    flow/conversation.py): it decides when a run of which conversation is requested."""

    def attach(
        self, request: Callable[[tuple[Run[_T], ...]], None], complete: Callable[[], None]
    ) -> None: ...

    def add(self, parts: Sequence[Part]) -> None: ...

    def close(self) -> None: ...


def batch_while_busy(
    mailbox: Mailbox, agent: str
) -> Callable[[Observable[Pair]], Observable[Request[_T]]]:
    """One agent's pairs (its conversations' events of each burst) -> deferred runs of
    `agent`, one outstanding at a time per conversation.

    The mailbox keeps the events of each conversation; while a run of a conversation is
    outstanding (waiting for a slot or working) its new events wait and become its next
    batch. The batch is taken when the run starts.
    """

    def operator(source: Observable[Pair]) -> Observable[Request[_T]]:
        def subscribe(
            observer: abc.ObserverBase[Request[_T]],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            def request(runs: tuple[Run[_T], ...]) -> None:
                observer.on_next((agent, runs))

            mailbox.attach(request, observer.on_completed)
            return source.subscribe(
                lambda pair: mailbox.add(pair[1]),  # its conversations' events of a burst
                observer.on_error,
                mailbox.close,
                scheduler=scheduler,
            )

        return Observable(subscribe)

    return operator


class Slots:
    """`merge(max_concurrent=limit)` whose limit can change on reload (0 means no cap), with
    a second cap per agent (`cap(agent)`: its `concurrency`, 0 = none).

    RxPY's merge fixes its limit at subscription and has one limit only; this is the same
    operator with the limits read when a run could start, and `set_limit` (or `recheck`, when
    an agent's cap changed) starting waiting runs. Of the runs that may start, the one that
    has waited longest starts first (SPEC §12): waiting runs are kept per agent in arrival
    order, so choosing is a look at each agent's oldest, not a scan of every waiting run.

    Catch-up: while tail-events has more output already waiting (`backlog(True)` after a
    read), no run starts, for at most `hold` seconds at a time: an agent's next batch then
    takes what the following reads bring, instead of one run per read. Runs start once the
    stream is caught up: a read leaves nothing waiting, and nothing more comes within
    `settle` seconds. The settle is for a writer slower than ghit-work (tail-events sharing a
    busy core with the agents): it empties the pipe for a moment between writes, and each such
    moment taken as the end started a round of runs that slowed the writer further (40 runs
    became 60-80 on the bench's catch-up, each round ~50 ms). A live event never waits: with
    no hold on, a read that leaves nothing waiting starts its runs at once.
    """

    def __init__(
        self,
        limit: int,
        schedule: Schedule | None = None,
        hold: float = HOLD,
        settle: float = SETTLE,
        cap: Callable[[str], int] = lambda agent: 0,
    ) -> None:
        self.limit = limit
        self.active = 0
        self.held = False
        self.hold = hold
        self.settle = settle
        self.cap = cap
        self.busy: dict[str, int] = {}  # runs working per agent
        self._schedule = schedule or call_later
        self._unhold: Callable[[], None] | None = None  # cancels the end of the hold
        self._settled: Callable[[], None] | None = None  # cancels the end of the settle
        # per agent, its waiting runs in arrival order: (arrival number, start)
        self._waiting: dict[str, deque[tuple[int, Callable[[], None]]]] = {}
        self._count = 0  # waiting runs, all agents
        self._arrivals = 0
        self._starting = False  # _start_waiting is running (a start may complete at once)

    def backlog(self, more: bool) -> None:
        """After each read from tail-events: is more output already waiting?"""
        if self._settled is not None:
            self._settled()
            self._settled = None
        if more:
            if not self.held and self.hold > 0:
                self.held = True
                self._unhold = self._schedule(self.hold, self._held_until_now)
        elif self.held and self.settle > 0:
            self._settled = self._schedule(self.settle, self._held_until_now)
        else:
            self._held_until_now()

    def _held_until_now(self) -> None:
        for cancel in (self._unhold, self._settled):
            if cancel is not None:
                cancel()
        self._unhold = self._settled = None
        if self.held:
            self.held = False
            self._start_waiting()

    @property
    def waiting(self) -> int:
        return self._count

    def _free(self) -> bool:
        return not self.held and (self.limit <= 0 or self.active < self.limit)

    def _agent_free(self, agent: str) -> bool:
        cap = self.cap(agent)
        return cap <= 0 or self.busy.get(agent, 0) < cap

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start what may start, oldest first. Not re-entered: a run that completes as soon
        as it is started (its conversation fell through: stopping, paused) calls back here;
        the loop below goes on instead, so thousands of them do not stack up calls."""
        if self._starting:
            return
        self._starting = True
        try:
            self._start_each()
        finally:
            self._starting = False

    def _start_each(self) -> None:
        while self._count and self._free():
            oldest: deque[tuple[int, Callable[[], None]]] | None = None
            oldest_agent = ""
            for agent, runs in self._waiting.items():
                if (oldest is None or runs[0][0] < oldest[0][0]) and self._agent_free(agent):
                    oldest, oldest_agent = runs, agent
            if oldest is None:
                return  # every waiting run's agent is at its cap
            _, start = oldest.popleft()
            self._count -= 1
            if not oldest:
                del self._waiting[oldest_agent]
            start()

    def merge(self) -> Callable[[Observable[Request[_T]]], Observable[_T]]:
        def operator(source: Observable[Request[_T]]) -> Observable[_T]:
            def subscribe(
                observer: abc.ObserverBase[_T], scheduler: abc.SchedulerBase | None = None
            ) -> abc.DisposableBase:
                group = CompositeDisposable()
                stopped = False

                def start(agent: str, run: Run[_T]) -> None:
                    self.active += 1
                    self.busy[agent] = self.busy.get(agent, 0) + 1
                    subscription = SingleAssignmentDisposable()
                    group.add(subscription)

                    def on_completed() -> None:
                        group.remove(subscription)
                        self.active -= 1
                        left = self.busy[agent] - 1
                        if left:
                            self.busy[agent] = left
                        else:
                            del self.busy[agent]
                        self._start_waiting()
                        if stopped and self.active == 0 and not self._count:
                            observer.on_completed()

                    try:
                        inner = run()
                    except Exception as error:  # a bug: the flow's error, as `defer` makes it
                        inner = reactivex.throw(error)
                    subscription.disposable = inner.subscribe(
                        observer.on_next, observer.on_error, on_completed, scheduler=scheduler
                    )

                def on_next(request: Request[_T]) -> None:
                    agent, runs = request
                    waiting = None
                    for run in runs:
                        if not self._count and self._free() and self._agent_free(agent):
                            start(agent, run)
                            continue
                        if waiting is None:
                            waiting = self._waiting.get(agent)
                            if waiting is None:
                                waiting = self._waiting[agent] = deque()
                        waiting.append((self._arrivals, functools.partial(start, agent, run)))
                        self._arrivals += 1
                        self._count += 1
                    if waiting is not None:  # once, not per run: the oldest first, theirs last
                        self._start_waiting()

                def on_completed() -> None:
                    nonlocal stopped
                    stopped = True
                    if self.active == 0 and not self._count:
                        observer.on_completed()

                group.add(
                    source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)
                )
                return group

            return Observable(subscribe)

        return operator
