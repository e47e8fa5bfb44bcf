"""One conversation's mailbox and state machine: events wait here until the run that takes
them (SPEC §3, §8, §12).

    idle ─► queued ─► working ─► idle
              ▲          ├─────► retrying / rate-limited ─(timer)─► queued
              │          ├─────► idle, its batch a dead letter
              │          └─────► needs-input ─(its next event, `resume`)─► queued / idle
              ├── throttled (the agent's budget is used up) ─(timer)─┘
              ├── quota (its account's usage limit, until it resets) ─(timer)─┘
              └── paused (the agent is: `ghit-work pause`) ─(resume)─┘

An agent (flow/agent.py) has one conversation (`""`) with `conversations = "agent"`, or one
per thread with `"thread"`. What happens after a run, and whether a run may start, is asked
of `policy`; this class keeps single flight (one run at a time per conversation, the batch
taken when the run gets its slot) and order (the retried batch first, events that arrived
meanwhile joining it in id order). Budgets, sessions and workspaces are the agent's, kept
there, so a conversation that is idle with nothing queued can be dropped and costs nothing.
Everything runs on the asyncio loop's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import reactivex
from reactivex import Observable
from reactivex import operators as ops

from ghitwork.bus.changes import BATCH_SHOWN, AgentChanged, AgentState, RunFinished, RunStarted
from ghitwork.config.model import AgentConfig
from ghitwork.flow import policy
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.durations import clock_time, format_duration
from ghitwork.model.events import Event
from ghitwork.model.ids import Ids
from ghitwork.model.results import RunResult
from ghitwork.run.spec import fault_text, prepare

if TYPE_CHECKING:
    from ghitwork.flow.agent import Agent

SHOWN_WAITING = 20  # events a throttled conversation names in its change (its notification)
WAITING = (AgentState.RETRYING, AgentState.RATE_LIMITED, AgentState.THROTTLED, AgentState.QUOTA)


class Conversation:
    __slots__ = (
        "_timer",
        "agent",
        "batch",
        "due",
        "key",
        "outstanding",
        "pending",
        "question",
        "redelivered",
        "state",
        "tries",
    )

    def __init__(self, agent: Agent, key: str) -> None:
        self.agent = agent
        self.key = key  # "" or a `thread:` scope
        self.pending: list[Event] = []
        self.redelivered = Ids()  # to be delivered again: their run did not finish
        self.state = AgentState.IDLE if agent.config.enabled else AgentState.DISABLED
        self.batch: Sequence[Event] = ()
        self.tries = policy.FIRST  # where the batch at the head of `pending` stands
        self.due: float | None = None  # when a retry or a throttled run may start
        self.outstanding = False  # a run is requested (queued for a slot) or working
        self.question: str | None = None  # in needs-input: what its last run asked
        self._timer: Callable[[], None] | None = None

    @property
    def config(self) -> AgentConfig:
        return self.agent.config

    @property
    def session_id(self) -> str | None:
        return self.agent.sessions.get(self.key)

    @session_id.setter
    def session_id(self, session: str | None) -> None:
        self.agent.set_session(self.key, session)

    def reconfigure(self) -> None:
        """The agent's settings changed (a reload): they apply from the next batch; a running
        one finishes, a waiting retry keeps its time."""
        config = self.config
        if self.state is AgentState.WORKING:
            return
        if self.state is AgentState.THROTTLED:
            self._cancel_timer()  # a changed budget applies at once
            self._set(AgentState.IDLE)
        if not config.enabled:
            self._cancel_timer()
            self._set(AgentState.DISABLED)
        elif self.state is AgentState.DISABLED:
            self._set(AgentState.IDLE)
        self.wake()

    def add(self, events: Sequence[Event]) -> None:
        self.merge(events)
        self.wake()

    def merge(self, events: Sequence[Event]) -> None:
        """Events join the queue in id order (a retried batch, or redelivered ones, may be
        older than what is queued); an event already queued is not queued twice."""
        pending = self.pending
        if pending and events and events[0].id <= pending[-1].id:
            merged = {event.id: event for event in pending}
            merged.update((event.id, event) for event in events)
            self.pending = [merged[i] for i in sorted(merged)]
        else:
            pending.extend(events)

    def requeued(self) -> None:
        """Some of its queued events went to other conversations (a reload to thread mode):
        its queue is said again, and it settles if nothing is left."""
        self._set(self.state, "its other queued events went to their threads", self.state)
        if self.idle:
            self.agent.settled(self)

    # -- decisions
    @property
    def runnable(self) -> bool:
        return self.config.enabled and not self.agent.stopping and self.state not in WAITING

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing running, nothing waiting: it may be dropped."""
        return (
            not self.pending
            and not self.outstanding
            and self._timer is None
            and self.state in (AgentState.IDLE, AgentState.DISABLED)
        )

    def wake(self, was: AgentState | None = None) -> bool:
        """Request a run when there is something to do and nothing outstanding. `was`: the
        state to report it came from, when not the current one."""
        request = self.agent.request
        if self.outstanding or not self.pending or not self.runnable or request is None:
            return False
        if self.key in self.agent.workdirs.tearing_down:
            return False  # its workspace is being removed; the end of that wakes it
        if self.agent.paused is not None:  # its events wait; `resume` wakes it
            self._set(AgentState.PAUSED, self.agent.paused.reason, was)
            return False
        if self._closed(was):
            return False
        held = self.agent.throttle()
        if held is not None:
            self._throttle(held, was)
            return False
        self.outstanding = True
        queueing = self.agent.queueing
        if queueing is not None:  # a burst's events: the agent publishes and requests them all
            queueing.append((self, was or self.state))
            self.question = None
            self.state = AgentState.QUEUED
            return True
        self._set(AgentState.QUEUED, was=was)
        request((self.start,))
        return True

    def _closed(self, was: AgentState | None = None) -> bool:
        """Its account's usage limit is reached (SPEC §14): wait in `quota` until it
        resets, with no attempt used."""
        until = self.agent.quota_until()
        if until is None or until <= self.agent.clock():
            return False
        self.due = until
        self._set(AgentState.QUOTA, f"quota until {clock_time(until, self.agent.clock())}", was)
        self._timer = self.agent.schedule(until - self.agent.clock(), self._release)
        return True

    def _throttle(self, held: policy.Throttle, was: AgentState | None = None) -> None:
        now = self.agent.clock()
        delay = max(0.0, held.until - now)
        hot = policy.hot_scope(self.config.budget, self.agent.run_scopes, self.pending, now)
        reason = (
            f"{held.budget} used up, runs again at {clock_time(held.until, now)} "
            f"(in {format_duration(delay)}){hot}"
        )
        self.due = held.until
        self._set(AgentState.THROTTLED, reason, was, tuple(self.pending[:SHOWN_WAITING]))
        self._timer = self.agent.schedule(delay, self._release)

    def _release(self) -> None:
        """A retry is due, or a budget allows runs again."""
        self._timer = None
        if self.state not in WAITING:
            return
        self.due = None
        waited, self.state = self.state, AgentState.IDLE
        if self.wake(was=waited) or self.state is not AgentState.IDLE:
            return  # reported as retrying -> queued, or -> throttled
        self.state = waited
        self._set(AgentState.IDLE)
        self._complete_if_done()
        self.agent.settled(self)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer()
            self._timer = None
        self.due = None

    def start(self) -> Observable[RunResult]:
        """The run got its slot: take every pending event as the batch, now (unless, while
        it waited for the slot, the agent was paused, its account closed or its budget used
        up by another of its conversations)."""
        if not self.runnable or not self.pending:
            self.outstanding = False
            self._set(AgentState.IDLE if self.config.enabled else AgentState.DISABLED)
            self._complete_if_done()
            self.agent.settled(self)
            return reactivex.empty()
        paused = self.agent.paused
        if paused is not None:
            self.outstanding = False
            self._set(AgentState.PAUSED, paused.reason)
            return reactivex.empty()
        self.outstanding = False
        if self._closed():
            return reactivex.empty()
        held = self.agent.throttle()
        if held is not None:
            self._throttle(held)
            return reactivex.empty()
        self.outstanding = True
        batch, self.pending = self.pending, []
        agent = self.agent
        redelivered = self.was_redelivered(batch)
        try:
            spec = prepare(
                self.config,
                batch,
                agent.environ,
                session_id=self.session_id,
                attempt=self.tries.attempt,
                redelivered=redelivered,
                conversation=self.key,
                setup=agent.workdirs.needs_setup(self.key),
            )
            agent.workdirs.using(self.key)
            ids, run = spec.event_ids, agent.launch(self.config, spec)  # ids shared, not copied
        except Exception as error:  # one run is one failure domain (SPEC §11)
            # Preparing the run failed (its template, its argv or environment, a bug): the
            # run's result, failed with outcome `error`, retried and dead-lettered like any.
            fault = self._fault(batch, error)
            ids, run = fault.event_ids, reactivex.of(fault)
        old, self.state = self.state, AgentState.WORKING
        self.batch = batch  # the pending list it was: no copy
        agent.started(batch)
        agent.publish(
            RunStarted(
                agent=agent.name,
                old=old,
                event_ids=ids,
                pid=None,
                resumed=self.resumed,
                redelivered=redelivered,
                session_id=self.session_id,
                queue=len(self.pending),
                attempt=self.tries.attempt,
                attempts=self.config.run_attempts,
                shown=tuple(batch[:BATCH_SHOWN]),
                conversation=self.key,
            )
        )
        return run.pipe(ops.do_action(on_next=self._finished))

    def _fault(self, batch: Sequence[Event], error: Exception) -> RunResult:
        ids = tuple([event.id for event in batch])
        return RunResult.of_fault(
            self.agent.name,
            ids,
            tuple(self.config.cmd),
            self.agent.clock(),
            fault_text(error),
            resumed=self.resumed,
            attempt=self.tries.attempt,
            conversation=self.key,
        )

    @property
    def resumed(self) -> bool:
        return self.session_id is not None and self.config.resume_cmd is not None

    def was_redelivered(self, batch: Sequence[Event]) -> bool:
        return bool(self.redelivered) and any(e.id in self.redelivered for e in batch)

    def _finished(self, result: RunResult) -> None:
        batch, self.batch = self.batch, ()
        agent = self.agent
        if result.session_id:
            self.session_id = result.session_id
        elif result.resumed and not result.ok:
            self.session_id = None  # the resumed session is gone: start fresh next time
        self.outstanding = False
        decision = None if result.stopped else policy.after_run(self.config, result, self.tries)
        if decision is not None:
            self.tries = policy.next_tries(self.tries, decision)
        if decision is None or isinstance(decision, policy.Retry | policy.Quota):
            # Not done (ghit-work is stopping, a retry, a closed quota window): these events
            # go again, first. The run may have done part of the work: the next attempt (and,
            # after a restart, attempt 1 again) tells the agent with `redelivered`.
            self.merge(batch)
            self.redelivered.update(event.id for event in batch)
        elif self.redelivered:
            self.redelivered.difference_update(event.id for event in batch)
        retry = decision if isinstance(decision, policy.Retry) else None
        asks = decision if isinstance(decision, policy.NeedsInput) else None
        quota = decision if isinstance(decision, policy.Quota) else None
        dead: DeadLetter | None = None
        if isinstance(decision, policy.GiveUp):
            dead = agent.bury(self.key, batch, result)
        if retry is not None and self.config.enabled:
            self.state = AgentState.RATE_LIMITED if retry.rate_limited else AgentState.RETRYING
            self.due = agent.clock() + retry.delay
            self._timer = agent.schedule(retry.delay, self._release)
        elif asks is not None:
            self.state = AgentState.NEEDS_INPUT
            self.question = asks.question
        elif quota is not None and self.config.enabled:
            until = agent.close_account(quota.until, result)
            self.state, self.due = AgentState.QUOTA, until
            self._timer = agent.schedule(max(0.0, until - agent.clock()), self._release)
        else:
            self.state = AgentState.IDLE if self.config.enabled else AgentState.DISABLED
        agent.publish(
            RunFinished(
                agent=agent.name,
                result=result,
                new=self.state,
                queue=len(self.pending),
                attempts=self.config.run_attempts,
                retry=retry,
                retry_at=self.due if retry is not None or quota is not None else None,
                dead_letter=dead,
                session_id=self.session_id,
                conversation=self.key,
            )
        )
        agent.workdirs.ran(self.key, result)
        if not self.wake():
            self._complete_if_done()
            agent.settled(self)

    @property
    def finished(self) -> bool:
        """Nothing outstanding, and no retry or throttled run waiting with events: at a stop
        or a drain's end, its part of the agent's flow is over."""
        return not self.outstanding and not (self.state in WAITING and self.pending)

    def _complete_if_done(self) -> None:
        if self.agent.closing:
            self.agent.finish(self)

    def ask(self, question: str | None) -> None:
        """In needs-input since before a restart (state_dir kept it)."""
        self._set(AgentState.NEEDS_INPUT, question or "")
        self.question = question

    def resume(self) -> None:
        """The agent's pause was lifted, or a human answered (`ghit-work resume`): a paused
        or needs-input conversation runs its queued events, or waits idle for its next."""
        if self.state in (AgentState.PAUSED, AgentState.NEEDS_INPUT):
            self._set(AgentState.IDLE if self.config.enabled else AgentState.DISABLED)
            if not self.wake():
                self._complete_if_done()
                self.agent.settled(self)

    def _set(
        self,
        new: AgentState,
        reason: str = "",
        was: AgentState | None = None,
        waiting: tuple[Event, ...] = (),
    ) -> None:
        if new is self.state and was is None:
            return
        if self.state is AgentState.NEEDS_INPUT and new is not AgentState.NEEDS_INPUT:
            self.question = None
        old, self.state = was or self.state, new
        self.agent.publish(
            AgentChanged(
                agent=self.agent.name,
                old=old,
                new=new,
                queue=len(self.pending),
                reason=reason,
                conversation=self.key,
                due=self.due if new in WAITING else None,
                waiting=waiting,
            )
        )
