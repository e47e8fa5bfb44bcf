"""What the dispatcher keeps in state_dir: the snapshot of everything the flow holds, and the
restore of it at start (queued events per conversation, sessions, workspaces, pauses, the
conversations waiting for a human, the accounts whose usage limit is reached, the ledger and
the dead letters). `self` is the Dispatcher (flow/dispatch.py)."""

from __future__ import annotations

import operator
import time
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from ghitwork.bus.changes import (
    AgentPaused,
    AgentState,
    DeadLettersLoaded,
    EventsRestored,
    Level,
    SessionsLoaded,
    UsageLoaded,
)
from ghitwork.flow.agent import Agent, Paused
from ghitwork.flow.routing import Pair, Part
from ghitwork.flow.workdirs import Workspace
from ghitwork.model.events import Event, Malformed, to_event
from ghitwork.model.ids import Ids
from ghitwork.persist.pending import Pending, SavedEvent
from ghitwork.persist.saved import Saved, SavedAgent

if TYPE_CHECKING:
    from ghitwork.flow.dispatch import Dispatcher

_ID = operator.attrgetter("id")


def requeue(agent: Agent, events: Sequence[Event], redelivered: Iterable[int]) -> tuple[Part, ...]:
    """`events` to be delivered again to `agent`, per conversation; those in `redelivered`
    are marked so (their run may have done part of the work: the agent is told)."""
    parts = agent.split(events)
    marks = set(redelivered)  # looked up once per event; let go once they are marked
    for conversation, part in parts:
        marked = [e.id for e in part if e.id in marks] if marks else []
        agent.conversation(conversation).redelivered.update(marked)
    return tuple(parts)


def _event(saved: SavedEvent) -> Event | Malformed:
    """A saved event: kept as its bytes (the journal's and snapshot's), or an object."""
    return saved if isinstance(saved, Event) else to_event(saved, b"")


def restore(self: Dispatcher, saved: Saved, handed_back: Collection[int] = ()) -> list[Pair]:
    """Session ids, workspaces and redelivery marks from the last run, and the saved
    events, to be delivered before anything new, each in its conversation (as the config
    says now: an instance upgraded from one conversation per agent, or switched to
    threads, splits its saved events by thread). Agents no longer in the config keep
    theirs, disabled. Each agent's saved events are handed over, not copied: its table of
    them is emptied once they are taken (`saved` has been written by then), so that the
    queues built here reuse its memory (a restart's peak, tests/test_store.py)."""
    pairs: list[Pair] = []
    self.ledger = saved.ledger
    for agent in self.agents.values():
        agent.ledger = self.ledger  # what their spend budgets read from now on
    if self.ledger.agents:
        self.publish(
            UsageLoaded(
                totals={name: a.total for name, a in self.ledger.agents.items()},
                days={name: dict(a.days) for name, a in self.ledger.agents.items()},
                conversations={
                    name: dict(a.conversations) for name, a in self.ledger.agents.items()
                },
            )
        )
    for account, until in saved.quotas.items():
        self.accounts.restore(account, until)
    self.letters.load(saved.dead, saved.next_dead_letter)
    # those `ghit-work redeliver` handed back while no instance ran are not announced as kept
    letters = tuple(letter for i, letter in self.letters.kept.items() if i not in handed_back)
    if letters:
        self.publish(DeadLettersLoaded(letters=letters))
    counts: dict[str, int] = {}
    sessions = {name: dict(kept.sessions) for name, kept in saved.agents.items() if kept.sessions}
    if sessions:  # shown where a run would show them: status, the API, the TUI
        self.publish(SessionsLoaded(sessions=sessions))
    for name, kept in saved.agents.items():
        agent = self.agent(name)
        for conversation, session in kept.sessions.items():
            agent.set_session(conversation, session)
        agent.runs.extend(kept.runs)
        # only the queued events of a batch in flight are marked: no other set is built
        redelivered = sum(1 for i in kept.inflight if i in kept.pending)
        events = [e for e in map(_event, kept.pending.events()) if isinstance(e, Event)]
        kept.pending.clear()
        pairs.append((name, requeue(agent, events, kept.inflight)))
        agent.workdirs.restore(
            {key: Workspace(path, used) for key, (path, used) in kept.workspaces.items()}
        )
        _restore_humans(self, agent, kept)
        if not events:
            continue
        counts[name] = len(events)
        message = f"{len(events)} saved event(s) to deliver first"
        if redelivered:
            message += f", {redelivered} of them redelivered (their run did not finish)"
        if not agent.config.enabled:
            message += "; the agent is not enabled in the config, so they stay saved"
        self._notice(Level.INFO, "restore", message, name)
    if pairs:  # queued from now on, whether or not the agent may run them
        self.publish(EventsRestored(counts=counts))
    return pairs


def _restore_humans(self: Dispatcher, agent: Agent, kept: SavedAgent) -> None:
    """A pause and the conversations waiting for a human, as the last run left them
    (a pause whose --for ran out meanwhile is over)."""
    for key, question in kept.asking.items():
        agent.conversation(key).ask(question)
    pause = kept.paused
    if pause is None:
        return
    until = pause.get("until")
    if until is not None and float(until) <= time.time():
        self.publish(AgentPaused(agent=agent.name, paused=False, by="its --for ran out"))
        return
    agent.pause(
        Paused(
            reason=str(pause.get("reason") or ""),
            until=None if until is None else float(until),
            by=str(pause.get("by") or ""),
            at=float(pause.get("at") or 0.0),
        ),
        restored=True,
    )


def snapshot(self: Dispatcher, cursor: int | None) -> Saved:
    saved = Saved(
        cursor=cursor,
        dead=self.letters.records(),
        next_dead_letter=self.letters.next_id,
        ledger=self.ledger,
        quotas={a: u for a in self.accounts.closed if (u := self.accounts.until(a))},
    )
    for name, agent in self.agents.items():
        events: list[SavedEvent] = []  # Events only: sorted by their id
        inflight: set[int] = set()
        for conversation in agent.conversations.values():
            events += conversation.batch
            events += conversation.pending
            inflight.update(e.id for e in conversation.batch)
            inflight.update(conversation.redelivered)
        events.sort(key=_ID)  # its conversations' events: each in one, once
        pending = Pending.ordered(events)
        asking = {
            key: c.question
            for key, c in agent.conversations.items()
            if c.state is AgentState.NEEDS_INPUT
        }
        paused = agent.paused
        kept = pending or agent.sessions or agent.runs or agent.workdirs.made or asking
        if not kept and paused is None:
            continue
        saved.agents[name] = SavedAgent(
            pending=pending,
            inflight=Ids(i for i in inflight if i in pending),
            sessions=dict(agent.sessions),
            runs=list(agent.runs),
            workspaces={k: (w.path, w.used) for k, w in agent.workdirs.made.items()},
            paused=None
            if paused is None
            else {
                "until": paused.until,
                "reason": paused.reason,
                "by": paused.by,
                "at": paused.at,
            },
            asking=asking,
        )
    return saved
