"""Routing stages of the pipeline: match, fan out, batch while busy, cap concurrency.

Each stage is a plain Rx operator so `pipeline.py` reads as the whole data flow, and each is
tested on its own in virtual time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, SingleAssignmentDisposable

from ghitwork.config import AgentConfig
from ghitwork.events import Event
from ghitwork.scopes import covering

_T = TypeVar("_T")
Pair = tuple[str, Event]


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
        self._cache: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}

    def match(self, event: Event) -> tuple[str, ...]:
        """The agents for `event`, in config order; never the event's own actor."""
        key = (event.kind, event.scopes)
        names = self._cache.get(key)
        if names is None:
            names = self._match(*key)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = names
        actor = event.actor
        if actor is None or not names:
            return names
        usernames = self.usernames
        return tuple(name for name in names if usernames[name] != actor)

    def _match(self, kind: str, scopes: tuple[str, ...]) -> tuple[str, ...]:
        by_kind = self.by_kind.get(kind)
        if not by_kind:
            return ()
        found: set[str] = set()
        for scope in scopes:
            for cover in covering(scope):
                agents = self.by_scope.get(cover)
                if agents:
                    found |= agents & by_kind
        return tuple(sorted(found, key=self.order.__getitem__))


def fan_out(
    match: Callable[[Event], tuple[str, ...]],
    routed: Callable[[Event, tuple[str, ...]], None] | None = None,
) -> Callable[[Observable[Event]], Observable[Pair]]:
    """Event -> one (agent, event) pair per matching agent, without an observable per event."""

    def operator(source: Observable[Event]) -> Observable[Pair]:
        def subscribe(
            observer: abc.ObserverBase[Pair], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def on_next(event: Event) -> None:
                names = match(event)
                if routed is not None:
                    routed(event, names)
                for name in names:
                    observer.on_next((name, event))

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

    def add(self, event: Event) -> None: ...

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
                lambda pair: mailbox.add(pair[1]),
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
