"""The whole data flow on one screen.

    tail-events stdout ──► bursts of events ──► fan_out(match) ─┐
    saved events (state_dir, delivered first) ──────────────────┴─► group_by(agent)
        ──► per agent: batch_while_busy (events wait while the agent is queued or working)
        ──► slots.merge() (at most `limit` runs at once, 0 = no cap) ──► run results

Each group is subscribed the moment it appears (flat_map), so no agent's first event is lost;
the cap sits over the deferred runs, never over the groups; a run takes its batch when it gets
its slot; a failed run is a RunResult value, never an Rx error.
"""

from __future__ import annotations

from typing import Protocol

import reactivex
from reactivex import GroupedObservable, Observable
from reactivex import operators as ops

from ghitwork.events import Event
from ghitwork.results import RunResult
from ghitwork.routing import Burst, Mailbox, Pair, Slots, batch_while_busy, fan_out
from ghitwork.state import Route


class Agents(Protocol):
    """What the flow needs of the agents' side (dispatch.Dispatcher, or a fake in tests)."""

    def route(self, event: Event) -> tuple[str, ...]: ...

    def routed(self, routes: tuple[Route, ...]) -> None: ...

    def mailbox(self, name: str) -> Mailbox: ...


def dispatch(
    events: Observable[Burst],
    agents: Agents,
    slots: Slots,
    injected: Observable[Pair] | None = None,
) -> Observable[RunResult]:
    """`injected`: (agent, event) pairs that skip matching: saved events delivered first."""

    def per_agent(group: GroupedObservable[str, Pair]) -> Observable[Observable[RunResult]]:
        return group.pipe(batch_while_busy(agents.mailbox(group.key)))

    def agent_of(pair: Pair) -> str:
        return pair[0]

    pairs = events.pipe(fan_out(agents.route, agents.routed))
    return reactivex.merge(injected or reactivex.empty(), pairs).pipe(
        ops.group_by(agent_of),
        ops.flat_map(per_agent),
        slots.merge(),
    )
