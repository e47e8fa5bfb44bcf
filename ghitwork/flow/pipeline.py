"""The whole data flow on one screen.

    tail-events stdout ──► bursts of events ──► fan_out(match, split) ─┐
    saved events (state_dir, delivered first) ─────────────────────────┴─►
        group_by_until((agent, conversation), until the conversation is dropped)
        ──► per conversation: batch_while_busy (events wait while it is queued or working)
        ──► slots.merge() (at most `concurrency` runs per agent and `limit` in all, 0 = no
            cap; the run waiting longest first) ──► run results

Each group is subscribed the moment it appears (flat_map), so no conversation's first event is
lost; the caps sit over the deferred runs, never over the groups; a run takes its batch when
it gets its slot; a failed run is a RunResult value, never an Rx error. A conversation that
goes idle with nothing queued ends its group (thread mode), so a thousand quiet threads hold
no subscription; with `conversations = "agent"` an agent's one group lives for ever.
Which parts are Rx operators and which are state machines, and why: docs/design.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import reactivex
from reactivex import GroupedObservable, Observable
from reactivex import operators as ops

from ghitwork.bus.changes import Route
from ghitwork.flow.routing import (
    Burst,
    Key,
    Mailbox,
    Pair,
    Request,
    Slots,
    batch_while_busy,
    fan_out,
)
from ghitwork.model.events import Event
from ghitwork.model.results import RunResult


class Agents(Protocol):
    """What the flow needs of the agents' side (dispatch.Dispatcher, or a fake in tests)."""

    def route(self, event: Event) -> tuple[str, ...]: ...

    def routed(self, routes: tuple[Route, ...]) -> None: ...

    def split(
        self, agent: str, events: Sequence[Event]
    ) -> Iterable[tuple[str, tuple[Event, ...]]]: ...

    def mailbox(self, key: Key) -> Mailbox: ...

    def ended(self, key: Key) -> Observable[Any]:
        """Completes when the conversation is dropped (its group then ends)."""
        ...


def dispatch(
    events: Observable[Burst],
    agents: Agents,
    slots: Slots,
    injected: Observable[Pair] | None = None,
) -> Observable[RunResult]:
    """`injected`: (conversation, events) pairs that skip matching: saved events delivered
    first, dead letters handed back."""

    def per_conversation(group: GroupedObservable[Key, Pair]) -> Observable[Request[RunResult]]:
        agent, _ = group.key
        return group.pipe(batch_while_busy(agents.mailbox(group.key), agent))

    def key_of(pair: Pair) -> Key:
        return pair[0]

    def until(group: GroupedObservable[Key, Pair]) -> Observable[Any]:
        return agents.ended(group.key)

    pairs = events.pipe(fan_out(agents.route, agents.routed, agents.split))
    return reactivex.merge(injected or reactivex.empty(), pairs).pipe(
        ops.group_by_until(key_of, None, until),
        ops.flat_map(per_conversation),
        slots.merge(),
    )
