"""Routing stages of the pipeline: match, fan out, batch while busy, cap concurrency.

Each stage is a plain Rx operator so `pipeline.py` reads as the whole data flow, and each is
tested on its own in virtual time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, SingleAssignmentDisposable

from ghitwork.config import AgentConfig
from ghitwork.events import Event
from ghitwork.scopes import covering
from ghitwork.state import Route

_T = TypeVar("_T")
Burst = Sequence[Event]  # the events of one read from the stream, in id order
Pair = tuple[str, tuple[Event, ...]]  # an agent and its events of one burst


class Matcher:
    """Which enabled agents receive an event.

    Built once per config: kind -> agents and scope -> agents indexes, so the cost of an event
    depends on the agents that could match it, not on all of them.
    """

    def __init__(self, agents: Iterable[AgentConfig]) -> None:
        self.order: dict[str, int] = {}
        self.usernames: dict[str, str] = {}
        self.by_kind: dict[str, frozenset[str]] = {}
        self.by_scope: dict[str, frozenset[str]] = {}
        kinds: dict[str, set[str]] = {}
        scopes: dict[str, set[str]] = {}
        for agent in agents:
            if not agent.enabled:
                continue
            self.order[agent.name] = len(self.order)
            self.usernames[agent.name] = agent.username
            for kind in agent.event_kinds:
                kinds.setdefault(kind, set()).add(agent.name)
            for scope in agent.event_scopes:
                scopes.setdefault(scope, set()).add(agent.name)
        self.by_kind = {k: frozenset(v) for k, v in kinds.items()}
        self.by_scope = {k: frozenset(v) for k, v in scopes.items()}
        self._cache: dict[str, frozenset[str]] = {}

    def match(self, event: Event) -> tuple[str, ...]:
        """The agents for `event`, in config order; never the event's own actor."""
        by_kind = self.by_kind.get(event.kind)
        if not by_kind:
            return ()
        scopes = event.scopes
        if len(scopes) == 1:
            covered = self._covered(scopes[0])
        else:
            covered = frozenset().union(*(self._covered(scope) for scope in scopes))
        found: frozenset[str] | set[str] = by_kind & covered
        if not found:
            return ()
        actor = event.actor
        if actor is not None:
            usernames = self.usernames
            found = {name for name in found if usernames[name] != actor}
        if len(found) == 1:
            return tuple(found)
        return tuple(sorted(found, key=self.order.__getitem__))

    def _covered(self, scope: str) -> frozenset[str]:
        """Every agent subscribed to `scope` or to a scope above it (cached per scope)."""
        agents = self._cache.get(scope)
        if agents is None:
            agents = frozenset().union(
                *(self.by_scope.get(cover, frozenset()) for cover in covering(scope))
            )
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[scope] = agents
        return agents


def fan_out(
    match: Callable[[Event], tuple[str, ...]],
    routed: Callable[[tuple[Route, ...]], None] | None = None,
) -> Callable[[Observable[Burst]], Observable[Pair]]:
    """A burst of events -> one (agent, its events) pair per agent that matches any of them.

    The stream is handled a read at a time, not an event at a time: a catch-up of 100,000
    events costs a few thousand Rx hops instead of hundreds of thousands, and each agent
    gets the events of one read as one batch. No observable is made per event.
    """

    def operator(source: Observable[Burst]) -> Observable[Pair]:
        def subscribe(
            observer: abc.ObserverBase[Pair], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def on_next(burst: Burst) -> None:
                per_agent: dict[str, list[Event]] = {}
                routes = []
                for event in burst:
                    names = match(event)
                    routes.append((event, names))
                    for name in names:
                        per_agent.setdefault(name, []).append(event)
                if routed is not None:
                    routed(tuple(routes))
                for name, events in per_agent.items():
                    observer.on_next((name, tuple(events)))

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return Observable(subscribe)

    return operator


class Mailbox(Protocol):
    """Per-agent batching state (see dispatch.Agent): it decides when a run is requested."""

    def attach(
        self, request: Callable[[Observable[_T]], None], complete: Callable[[], None]
    ) -> None: ...

    def add(self, events: Sequence[Event]) -> None: ...

    def close(self) -> None: ...


def batch_while_busy(
    mailbox: Mailbox,
) -> Callable[[Observable[Pair]], Observable[Observable[_T]]]:
    """One agent's events -> deferred runs, one outstanding at a time.

    The mailbox keeps the events; while a run is outstanding (waiting for a slot or working)
    new events wait in it and become the next batch. The batch is taken when the run starts.
    """

    def operator(source: Observable[Pair]) -> Observable[Observable[_T]]:
        def subscribe(
            observer: abc.ObserverBase[Observable[_T]],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            mailbox.attach(observer.on_next, observer.on_completed)
            return source.subscribe(
                lambda pair: mailbox.add(pair[1]),  # the agent's events of one burst
                observer.on_error,
                mailbox.close,
                scheduler=scheduler,
            )

        return Observable(subscribe)

    return operator


class Slots:
    """`merge(max_concurrent=limit)` whose limit can change on reload (0 means no cap).

    RxPY's merge fixes its limit at subscription; this is the same operator with the limit
    read from `self.limit`, and `set_limit` starting waiting runs when it grows. Waiting runs
    start in arrival order.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiting: deque[Callable[[], None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _free(self) -> bool:
        return self.limit <= 0 or self.active < self.limit

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._start_waiting()

    def _start_waiting(self) -> None:
        while self._waiting and self._free():
            self._waiting.popleft()()

    def merge(self) -> Callable[[Observable[Observable[_T]]], Observable[_T]]:
        def operator(source: Observable[Observable[_T]]) -> Observable[_T]:
            def subscribe(
                observer: abc.ObserverBase[_T], scheduler: abc.SchedulerBase | None = None
            ) -> abc.DisposableBase:
                group = CompositeDisposable()
                stopped = False

                def start(inner: Observable[_T]) -> None:
                    self.active += 1
                    subscription = SingleAssignmentDisposable()
                    group.add(subscription)

                    def on_completed() -> None:
                        group.remove(subscription)
                        self.active -= 1
                        self._start_waiting()
                        if stopped and self.active == 0 and not self._waiting:
                            observer.on_completed()

                    subscription.disposable = inner.subscribe(
                        observer.on_next, observer.on_error, on_completed, scheduler=scheduler
                    )

                def on_next(inner: Observable[_T]) -> None:
                    if self._free() and not self._waiting:
                        start(inner)
                    else:
                        self._waiting.append(lambda: start(inner))

                def on_completed() -> None:
                    nonlocal stopped
                    stopped = True
                    if self.active == 0 and not self._waiting:
                        observer.on_completed()

                group.add(
                    source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)
                )
                return group

            return Observable(subscribe)

        return operator
