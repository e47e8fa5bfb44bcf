"""One agent's mailbox and state machine: events wait here until the run that takes them.

    idle ─► queued ─► working ─► idle
              ▲          ├─────► retrying / rate-limited ─(timer)─► queued
              │          └─────► idle, its batch a dead letter
              └── throttled (a budget is used up) ─(timer)─┘

What happens after a run, and whether a run may start, is asked of `policy`; this class keeps
single flight (one run at a time, the batch taken when the run gets its slot) and order (the
retried batch first, events that arrived meanwhile joining it in id order). Everything runs on
the asyncio loop's thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import reactivex
from reactivex import Observable
from reactivex import operators as ops

from ghitwork import policy
from ghitwork.config import AgentConfig
from ghitwork.deadletters import DeadLetter
from ghitwork.durations import MAX_BUDGET_RUNS, clock_time, format_duration
from ghitwork.events import Event
from ghitwork.results import RunResult
from ghitwork.state import (
    BATCH_SHOWN,
    AgentChanged,
    AgentState,
    Change,
    RunFinished,
    RunStarted,
)

RECENT_STARTS = MAX_BUDGET_RUNS  # run start times kept (enough for any run budget)
WAITING = (AgentState.RETRYING, AgentState.RATE_LIMITED, AgentState.THROTTLED)

Schedule = Callable[[float, Callable[[], None]], Callable[[], None]]
Launch = Callable[["Agent", list[Event]], Observable[RunResult]]
# (agent, batch, its last run) -> the dead letter, kept by the dispatcher
Bury = Callable[["Agent", Sequence[Event], RunResult], DeadLetter]


def call_later(delay: float, action: Callable[[], None]) -> Callable[[], None]:
    """Run `action` after `delay` seconds on the running asyncio loop; returns a cancel."""
    return asyncio.get_running_loop().call_later(delay, action).cancel


def main_scope(event: Event) -> str:
    """The most specific scope of an event (a thread, if it has one)."""
    for scope in event.scopes:
        if scope.startswith("thread:"):
            return scope
    return event.scopes[0] if event.scopes else "(no scope)"


class CannotStart(Exception):
    """The batch cannot be handed to the agent (its template failed); it stays queued."""


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        launch: Launch,
        publish: Callable[[Change], None],
        on_idle: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        schedule: Schedule | None = None,
        bury: Bury | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.clock = clock
        self.schedule = schedule or call_later
        self.pending: list[Event] = []
        self.redelivered: set[int] = set()
        self.session_id: str | None = None
        self.state = AgentState.IDLE if config.enabled else AgentState.DISABLED
        self.batch: tuple[Event, ...] = ()
        self.tries = policy.Tries()  # where the batch at the head of `pending` stands
        self.due: float | None = None  # when a retry or a throttled agent may run again
        self.outstanding = False  # a run is requested (queued for a slot) or working
        self.stopping = False
        self.removed = False  # not in the config any more (kept for its saved events)
        self.runs: list[float] = []  # start times of recent runs (for budgets)
        # (end time, tokens, USD) of recent runs, for spend budgets (the ledger's list)
        self.spent: Callable[[], Sequence[tuple[float, int, float]]] = lambda: ()
        self.run_scopes: deque[tuple[float, tuple[str, ...]]] = deque(maxlen=RECENT_STARTS)
        self._launch = launch
        self._publish = publish
        self._on_idle = on_idle
        self._bury = bury
        self._timer: Callable[[], None] | None = None
        self._request: Callable[[Observable[RunResult]], None] | None = None
        self._complete: Callable[[], None] | None = None
        self._closing = False

    def reconfigure(self, config: AgentConfig) -> None:
        """New settings (a reload): they apply from the next batch; a running one finishes,
        a waiting retry keeps its time."""
        self.config = config
        if self.state is AgentState.WORKING:
            return
        if self.state is AgentState.THROTTLED:
            self._cancel_timer()  # a changed budget applies at once
            self._set(AgentState.IDLE)
        if not config.enabled:
            self._cancel_timer()
            self._set(AgentState.DISABLED)
        elif self.state in (AgentState.DISABLED, AgentState.FAILING):
            self._set(AgentState.IDLE)
        self.wake()

    # -- the Mailbox protocol used by routing.batch_while_busy
    def attach(
        self, request: Callable[[Observable[Any]], None], complete: Callable[[], None]
    ) -> None:
        self._request, self._complete = request, complete
        self.wake()

    def add(self, events: Sequence[Event]) -> None:
        self._merge(events)
        self.wake()

    def queue(self, events: Sequence[Event]) -> None:
        """Queue without asking for a run (the pipeline's `add` of the same events follows)."""
        self._merge(events)

    def _merge(self, events: Sequence[Event]) -> None:
        """Events join the queue in id order (a retried batch, or redelivered ones, may be
        older than what is queued); an event already queued is not queued twice."""
        pending = self.pending
        if pending and events and events[0].id <= pending[-1].id:
            merged = {event.id: event for event in pending}
            merged.update((event.id, event) for event in events)
            self.pending = [merged[i] for i in sorted(merged)]
        else:
            pending.extend(events)

    def close(self) -> None:
        self._closing = True
        self._complete_if_done()

    # -- decisions
    @property
    def runnable(self) -> bool:
        return (
            self.config.enabled
            and not self.stopping
            and self.state is not AgentState.FAILING
            and self.state not in WAITING
        )

    def wake(self, was: AgentState | None = None) -> bool:
        """Request a run when there is something to do and nothing outstanding. `was`: the
        state to report it came from, when not the current one."""
        if self.outstanding or not self.pending or not self.runnable or self._request is None:
            return False
        held = policy.throttle(self.config, self.runs, self.spent(), self.clock())
        if held is not None:
            self._throttle(held, was)
            return False
        self.outstanding = True
        self._set(AgentState.QUEUED, was=was)
        self._request(reactivex.defer(lambda _scheduler: self._start()))
        return True

    def _throttle(self, held: policy.Throttle, was: AgentState | None = None) -> None:
        delay = max(0.0, held.until - self.clock())
        reason = (
            f"{held.budget} used up, runs again at {clock_time(held.until)} "
            f"(in {format_duration(delay)}){self._hot_scope()}"
        )
        self.due = held.until
        self._set(AgentState.THROTTLED, reason, was)
        self._timer = self.schedule(delay, self._release)

    def _hot_scope(self) -> str:
        """The scope that woke the agent most in its window: where a loop usually is."""
        budget = self.config.budget
        since = self.clock() - (budget.window if budget else 0.0)
        counts: Counter[str] = Counter()
        for started, scopes in self.run_scopes:
            if started > since:
                counts.update(scopes)
        counts.update(main_scope(event) for event in self.pending)
        if not counts:
            return ""
        scope, count = counts.most_common(1)[0]
        return f"; most events from {scope} ({count} in the window)"

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

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer()
            self._timer = None
        self.due = None

    def _start(self) -> Observable[RunResult]:
        """The run got its slot: take every pending event as the batch, now."""
        if not self.runnable or not self.pending:
            self.outstanding = False
            self._set(AgentState.IDLE if self.config.enabled else AgentState.DISABLED)
            self._complete_if_done()
            return reactivex.empty()
        batch, self.pending = self.pending, []
        try:
            run = self._launch(self, batch)
        except CannotStart as error:
            self.pending[:0] = batch
            self.outstanding = False
            self._set(AgentState.FAILING, str(error))
            self._complete_if_done()
            return reactivex.empty()
        old, self.state = self.state, AgentState.WORKING
        self.batch = tuple(batch)
        started = self.clock()
        self.runs.append(started)
        del self.runs[:-RECENT_STARTS]
        if self.config.budget is not None:  # what a throttle message names (_hot_scope)
            self.run_scopes.append((started, tuple(main_scope(event) for event in batch)))
        self._publish(
            RunStarted(
                agent=self.name,
                old=old,
                event_ids=tuple([e.id for e in batch]),
                pid=None,
                resumed=self.resumed,
                redelivered=self.was_redelivered(batch),
                session_id=self.session_id,
                queue=len(self.pending),
                attempt=self.tries.attempt,
                attempts=self.config.run_attempts,
                shown=tuple(batch[:BATCH_SHOWN]),
            )
        )
        return run.pipe(ops.do_action(on_next=self._finished))

    @property
    def resumed(self) -> bool:
        return self.session_id is not None and self.config.resume_cmd is not None

    def was_redelivered(self, batch: Sequence[Event]) -> bool:
        redelivered = self.redelivered
        return bool(redelivered) and any(event.id in redelivered for event in batch)

    def _finished(self, result: RunResult) -> None:
        batch, self.batch = self.batch, ()
        if result.session_id:
            self.session_id = result.session_id
        elif result.resumed and not result.ok:
            self.session_id = None  # the resumed session is gone: start fresh next time
        self.outstanding = False
        retry: policy.Retry | None = None
        dead: DeadLetter | None = None
        if result.stopped:
            # ghit-work is stopping: not finished, these events go again, first.
            self._merge(batch)
            self.redelivered.update(event.id for event in batch)
        else:
            decision = policy.after_run(self.config, result, self.tries)
            self.tries = policy.next_tries(self.tries, decision)
            if isinstance(decision, policy.Retry):
                retry = decision
                self._merge(batch)
                # The failed run may have done part of the work: the retry (and, after a
                # restart, attempt 1 again) tells the agent with `redelivered`.
                self.redelivered.update(event.id for event in batch)
            else:
                if self.redelivered:
                    self.redelivered.difference_update(event.id for event in batch)
                if isinstance(decision, policy.GiveUp) and self._bury is not None:
                    dead = self._bury(self, batch, result)
        if retry is not None and self.config.enabled:
            self.state = AgentState.RATE_LIMITED if retry.rate_limited else AgentState.RETRYING
            self.due = self.clock() + retry.delay
            self._timer = self.schedule(retry.delay, self._release)
        else:
            self.state = AgentState.IDLE if self.config.enabled else AgentState.DISABLED
        self._publish(
            RunFinished(
                agent=self.name,
                result=result,
                new=self.state,
                queue=len(self.pending),
                attempts=self.config.run_attempts,
                retry=retry,
                retry_at=self.due if retry is not None else None,
                dead_letter=dead,
            )
        )
        if not self.wake():
            self._complete_if_done()
            self._on_idle()

    def _complete_if_done(self) -> None:
        waiting = self.state in WAITING and bool(self.pending)
        if self._closing and not self.outstanding and not waiting and self._complete is not None:
            complete, self._complete = self._complete, None
            complete()

    def _set(self, new: AgentState, reason: str = "", was: AgentState | None = None) -> None:
        if new is self.state and was is None:
            return
        old, self.state = was or self.state, new
        self._publish(
            AgentChanged(agent=self.name, old=old, new=new, queue=len(self.pending), reason=reason)
        )
