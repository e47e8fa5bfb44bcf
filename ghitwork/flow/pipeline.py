"""The whole data flow on one screen.

    tail-events stdout ──► bursts of events ──► fan_out(match, split) ─┐
    saved events (state_dir, delivered first) ─────────────────────────┴─►
        group_by(agent)
        ──► per agent: batch_while_busy (a conversation's events wait while it is queued or
            working; one state machine per conversation, in the agent's mailbox)
        ──► slots.merge() (at most `concurrency` runs per agent and `limit` in all, 0 = no
            cap; the run waiting longest first) ──► run results

Each group is subscribed the moment it appears (flat_map), so no agent's first event is lost;
the caps sit over the deferred runs, never over the groups; a run takes its batch when it
gets its slot; a failed run is a RunResult value, never an Rx error. The conversations of an
agent are keyed inside its mailbox, not by a group each: a group costs ~20 Rx objects, and a
catch-up that opens 19,000 threads spent half its time making them (docs/design.md). A
conversation that goes idle with nothing queued is dropped (thread mode), so a thousand quiet
threads cost nothing. Which parts are Rx operators and which are state machines, and why:
docs/design.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import reactivex
from reactivex import GroupedObservable, Observable
from reactivex import operators as ops

from ghitwork.bus.changes import Route
from ghitwork.flow.routing import (
    Burst,
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

    def routed(self, routes: tuple[Route, ...], pairs: tuple[Pair, ...]) -> None: ...

    def split(
        self, agent: str, events: Sequence[Event]
    ) -> Iterable[tuple[str, tuple[Event, ...]]]: ...

    def mailbox(self, agent: str) -> Mailbox: ...


def dispatch(
    events: Observable[Burst],
    agents: Agents,
    slots: Slots,
    injected: Observable[Pair] | None = None,
) -> Observable[RunResult]:
    """`injected`: (agent, ((conversation, events), ...)) pairs that skip matching: saved
    events delivered first, dead letters handed back."""

    def per_agent(group: GroupedObservable[str, Pair]) -> Observable[Request[RunResult]]:
        return group.pipe(batch_while_busy(agents.mailbox(group.key), group.key))

    def agent_of(pair: Pair) -> str:
        return pair[0]

    pairs = events.pipe(fan_out(agents.route, agents.routed, agents.split))
    return reactivex.merge(injected or reactivex.empty(), pairs).pipe(
        ops.group_by(agent_of),
        ops.flat_map(per_agent),
        slots.merge(),
    )
