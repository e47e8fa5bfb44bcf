"""The agents' side of the pipeline: one mailbox per agent, and the launch of its runs.

`Agent` is the per-agent state the `batch_while_busy` stage works on: its pending events, its
state, its session id and its last runs. `Dispatcher` owns every `Agent`, turns a batch into an
`Invocation`, and publishes each change on the state bus. All of it runs on the asyncio loop's
thread, so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import reactivex
from reactivex import Observable
from reactivex import operators as ops

from ghitwork import prompt
from ghitwork.config import AgentConfig, Config
from ghitwork.durations import MAX_BUDGET_RUNS, format_duration
from ghitwork.events import Event, to_event
from ghitwork.routing import Matcher, Pair
from ghitwork.runner import Invocation, RunResult, agent_environment
from ghitwork.state import (
    AgentChanged,
    AgentState,
    Change,
    EventsRouted,
    Level,
    Notice,
    Route,
    RunFinished,
    RunStarted,
)
from ghitwork.store import Saved, SavedAgent

RECENT_STARTS = MAX_BUDGET_RUNS  # run start times kept (enough for any run budget)


Schedule = Callable[[float, Callable[[], None]], Callable[[], None]]


def call_later(delay: float, action: Callable[[], None]) -> Callable[[], None]:
    """Run `action` after `delay` seconds on the running asyncio loop; returns a cancel."""
    return asyncio.get_running_loop().call_later(delay, action).cancel


def _main_scope(event: Event) -> str:
    """The most specific scope of an event (a thread, if it has one)."""
    for scope in event.scopes:
        if scope.startswith("thread:"):
            return scope
    return event.scopes[0] if event.scopes else "(no scope)"


def _clock_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%H:%M:%SZ")


class CannotStart(Exception):
    """The batch cannot be handed to the agent (its template failed); it stays queued."""


Launch = Callable[["Agent", list[Event]], Observable[RunResult]]


class Agent:
    """One agent's mailbox: events wait here until the run that takes them starts."""

    def __init__(
        self,
        config: AgentConfig,
        launch: Launch,
        publish: Callable[[Change], None],
        on_idle: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        schedule: Schedule | None = None,
    ) -> None:
        self.name = config.name
        self.clock = clock
        self.schedule = schedule or call_later
        self._release: Callable[[], None] | None = None
        self.run_scopes: deque[tuple[float, tuple[str, ...]]] = deque(maxlen=RECENT_STARTS)
        self.config = config
        self.pending: list[Event] = []
        self.redelivered: set[int] = set()
        self.session_id: str | None = None
        self.state = AgentState.IDLE if config.enabled else AgentState.DISABLED
        self.batch: tuple[Event, ...] = ()
        self.outstanding = False  # a run is requested (queued for a slot) or working
        self.stopping = False
        self.removed = False  # not in the config any more (kept for its saved events)
        self.runs: list[float] = []  # start times of recent runs (for run budgets)
        self._launch = launch
        self._publish = publish
        self._on_idle = on_idle
        self._request: Callable[[Observable[RunResult]], None] | None = None
        self._complete: Callable[[], None] | None = None
        self._closing = False

    def reconfigure(self, config: AgentConfig) -> None:
        """New settings (a reload): they apply from the next batch; a running one finishes."""
        self.config = config
        if self.state is AgentState.WORKING:
            return
        if self.state is AgentState.THROTTLED:
            self._cancel_throttle()  # a changed budget applies at once
            self._set(AgentState.IDLE)
        if not config.enabled:
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
        self.pending.extend(events)
        self.wake()

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
            and self.state is not AgentState.THROTTLED
        )

    def wake(self) -> bool:
        """Request a run when there is something to do and nothing outstanding."""
        if self.outstanding or not self.pending or not self.runnable or self._request is None:
            return False
        until = self._budget_allows_at()
        if until is not None:
            self._throttle(until)
            return False
        self.outstanding = True
        self._set(AgentState.QUEUED)
        self._request(reactivex.defer(lambda _scheduler: self._start()))
        return True

    # -- run budget: at most N starts in any rolling window
    def _budget_allows_at(self) -> float | None:
        """None when a run may start now; else the time the window allows the next one."""
        budget = self.config.budget
        if budget is None:
            return None
        since = self.clock() - budget.window
        recent = [started for started in self.runs if started > since]
        if len(recent) < budget.runs:
            return None
        return recent[-budget.runs] + budget.window

    def _throttle(self, until: float) -> None:
        delay = max(0.0, until - self.clock())
        budget = self.config.budget
        reason = (
            f"budget {budget} used up, runs again at {_clock_time(until)} "
            f"(in {format_duration(delay)}){self._hot_scope()}"
        )
        self._set(AgentState.THROTTLED, reason)
        self._release = self.schedule(delay, self._unthrottle)

    def _hot_scope(self) -> str:
        """The scope that woke the agent most in its window: where a loop usually is."""
        budget = self.config.budget
        since = self.clock() - (budget.window if budget else 0.0)
        counts: Counter[str] = Counter()
        for started, scopes in self.run_scopes:
            if started > since:
                counts.update(scopes)
        counts.update(_main_scope(event) for event in self.pending)
        if not counts:
            return ""
        scope, count = counts.most_common(1)[0]
        return f"; most events from {scope} ({count} in the window)"

    def _unthrottle(self) -> None:
        self._release = None
        if self.state is not AgentState.THROTTLED:
            return
        self._set(AgentState.IDLE)
        if not self.wake():
            self._complete_if_done()

    def _cancel_throttle(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

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
        self.run_scopes.append((started, tuple(_main_scope(event) for event in batch)))
        self._publish(
            RunStarted(
                agent=self.name,
                old=old,
                event_ids=tuple(e.id for e in batch),
                pid=None,
                resumed=self._resumed(),
                redelivered=self._was_redelivered(batch),
                session_id=self.session_id,
                queue=len(self.pending),
            )
        )
        return run.pipe(ops.do_action(on_next=self._finished))

    def _resumed(self) -> bool:
        return self.session_id is not None and self.config.resume_cmd is not None

    def _was_redelivered(self, batch: Sequence[Event]) -> bool:
        return any(event.id in self.redelivered for event in batch)

    def _finished(self, result: RunResult) -> None:
        batch, self.batch = self.batch, ()
        if result.stopped:
            # Not finished: these events go again, first, marked as redelivered.
            self.pending[:0] = batch
            self.redelivered.update(event.id for event in batch)
        else:
            self.redelivered.difference_update(event.id for event in batch)
        if result.session_id:
            self.session_id = result.session_id
        elif result.resumed and not result.ok:
            self.session_id = None  # the resumed session is gone: start fresh next time
        self.outstanding = False
        self.state = AgentState.IDLE if self.config.enabled else AgentState.DISABLED
        self._publish(
            RunFinished(agent=self.name, result=result, new=self.state, queue=len(self.pending))
        )
        if not self.wake():
            self._complete_if_done()
            self._on_idle()

    def _complete_if_done(self) -> None:
        waiting_for_budget = self.state is AgentState.THROTTLED and self.pending
        if (
            self._closing
            and not self.outstanding
            and not waiting_for_budget
            and self._complete is not None
        ):
            complete, self._complete = self._complete, None
            complete()

    def _set(self, new: AgentState, reason: str = "") -> None:
        if new is self.state:
            return
        old, self.state = self.state, new
        self._publish(
            AgentChanged(agent=self.name, old=old, new=new, queue=len(self.pending), reason=reason)
        )


class Dispatcher:
    """Owns the agents, the matcher and the running invocations."""

    def __init__(
        self,
        config: Config,
        publish: Callable[[Change], None],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.publish = publish
        self.environ = dict(os.environ if environ is None else environ)
        self.secrets = [v for k, v in self.environ.items() if k == "GHIT_API_TOKEN" and v]
        self.matcher = Matcher(config.agents)
        self.agents: dict[str, Agent] = {}
        self.running: dict[str, Invocation] = {}
        self._idle_waiters: list[asyncio.Future[None]] = []
        for agent in config.agents:
            self.mailbox(agent.name)

    def mailbox(self, name: str) -> Agent:
        agent = self.agents.get(name)
        if agent is None:
            agent_config = self.config.agent(name)
            assert agent_config is not None, f"no agent {name}"
            agent = Agent(agent_config, self.launch, self.publish, self._check_idle)
            self.agents[name] = agent
        return agent

    def route(self, event: Event) -> tuple[str, ...]:
        return self.matcher.match(event)

    def routed(self, routes: tuple[Route, ...]) -> None:
        self.publish(EventsRouted(routes=routes))

    def launch(self, agent: Agent, batch: list[Event]) -> Observable[RunResult]:
        config = agent.config
        resumed = agent.session_id is not None and config.resume_cmd is not None
        context = {
            "agent": {
                "name": config.name,
                "username": config.username,
                "workdir": str(config.workdir),
            },
            "events": [event.data for event in batch],
            "session_id": agent.session_id,
            "resumed": resumed,
            "redelivered": any(event.id in agent.redelivered for event in batch),
        }
        try:
            text = config.prompt.render(context)
        except Exception as error:  # a template may raise anything; it must not stop others
            message = (
                f"prompt template {config.prompt.origin} failed: {prompt.describe_error(error)}"
            )
            self._notice(
                Level.ERROR,
                "template",
                f"{message}; {len(batch)} event(s) stay queued until a reload fixes it",
                agent.name,
            )
            raise CannotStart(message) from None
        if resumed:
            assert config.resume_cmd is not None and agent.session_id is not None
            argv = [part.replace("{session_id}", agent.session_id) for part in config.resume_cmd]
        else:
            argv = list(config.cmd)
        invocation = Invocation(
            agent=config.name,
            argv=argv,
            prompt=text,
            workdir=config.workdir,
            env=agent_environment(self.environ, config.env, config.name),
            event_ids=[event.id for event in batch],
            timeout=config.timeout,
            logdir=config.logdir,
            session_pattern=config.session_id_pattern,
            resumed=resumed,
            secrets=self.secrets,
            forward=None if config.logdir else self._forwarder(config.name),
        )
        self.running[config.name] = invocation

        async def run() -> RunResult:
            try:
                return await invocation.run()
            finally:
                self.running.pop(config.name, None)

        return reactivex.from_future(asyncio.ensure_future(run()))

    def _forwarder(self, name: str) -> Callable[[str, str], None]:
        def forward(stream: str, line: str) -> None:
            self._notice(Level.INFO, f"agent.{stream}", line, name)

        return forward

    def terminate(self, name: str, reason: str, requeue: bool = False) -> int | None:
        """SIGTERM the agent's running invocation (SIGKILL after a grace period); its pid.
        Without `requeue` (the operator's `k`) the run simply fails: its batch is not
        delivered again."""
        invocation = self.running.get(name)
        if invocation is None:
            return None
        invocation.terminate(reason, requeue)
        return invocation.pid

    def refuse_new_runs(self) -> None:
        """No agent starts a run from now on; requests waiting for a slot fall through."""
        for agent in self.agents.values():
            agent.stopping = True

    async def stop(self) -> None:
        """No new runs; terminate the running ones and wait until every agent is idle."""
        self.refuse_new_runs()
        for name in list(self.running):
            self.terminate(name, "ghit-work is stopping", requeue=True)
        await self.wait_idle()

    async def wait_idle(self) -> None:
        """Until no agent has a run working (queued requests are dropped by `stopping`)."""
        while any(agent.state is AgentState.WORKING for agent in self.agents.values()):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def _check_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pending_events(self) -> dict[str, list[Event]]:
        return {name: list(agent.pending) for name, agent in self.agents.items() if agent.pending}

    # -- durability and reload
    def restore(self, saved: Saved) -> list[Pair]:
        """Session ids and redelivery marks from the last run, and the saved events, to be
        delivered before anything new. Agents no longer in the config keep theirs, disabled."""
        pairs: list[Pair] = []
        for name, kept in saved.agents.items():
            agent = self.agents.get(name) or self._removed_agent(name)
            agent.session_id = kept.session_id
            agent.runs.extend(kept.runs)
            events = [
                e
                for e in (to_event(kept.pending[i], b"") for i in sorted(kept.pending))
                if isinstance(e, Event)
            ]
            agent.redelivered.update(kept.inflight & kept.pending.keys())
            if not events:
                continue
            pairs.append((name, tuple(events)))
            message = f"{len(events)} saved event(s) to deliver first"
            if agent.redelivered:
                message += (
                    f", {len(agent.redelivered)} of them redelivered (their run did not finish)"
                )
            if not agent.config.enabled:
                message += "; the agent is not enabled in the config, so they stay saved"
            self._notice(Level.INFO, "restore", message, name)
        return pairs

    def _removed_agent(self, name: str) -> Agent:
        """An agent known from saved state or a past config, not in the current one."""
        config = AgentConfig(
            name=name,
            cmd=("",),
            username="",
            event_scopes=(),
            event_kinds=(),
            workdir=Path("."),
            prompt=prompt.default(),
            enabled=False,
        )
        agent = Agent(config, self.launch, self.publish, self._check_idle)
        agent.removed = True
        self.agents[name] = agent
        return agent

    def snapshot(self, cursor: int | None) -> Saved:
        saved = Saved(cursor=cursor)
        for name, agent in self.agents.items():
            events = [*agent.batch, *agent.pending]
            if not events and agent.session_id is None and not agent.runs:
                continue
            pending = {event.id: event.data for event in events}
            inflight = {event.id for event in agent.batch} | agent.redelivered
            saved.agents[name] = SavedAgent(
                pending=pending,
                inflight=inflight & pending.keys(),
                session_id=agent.session_id,
                runs=list(agent.runs),
            )
        return saved

    def reload(self, config: Config) -> None:
        """Apply a new config: added agents start receiving, removed or disabled ones finish
        their run and get nothing more (their events stay saved), changed ones use the new
        settings from their next batch."""
        self.config = config
        self.matcher = Matcher(config.agents)
        added, changed = [], []
        for agent_config in config.agents:
            agent = self.agents.get(agent_config.name)
            if agent is None:
                self.mailbox(agent_config.name)
                added.append(agent_config.name)
                continue
            if agent.removed:
                added.append(agent_config.name)
            else:
                changed.append(agent_config.name)
            agent.removed = False
            agent.reconfigure(agent_config)
        names = {agent.name for agent in config.agents}
        removed = []
        for name, agent in self.agents.items():
            if name not in names and not agent.removed:
                agent.removed = True
                agent.reconfigure(replace(agent.config, enabled=False))
                removed.append(name)
        self._notice(
            Level.INFO,
            "reload",
            f"config reloaded: {len(config.enabled_agents)} of {len(config.agents)} "
            f"agents enabled; added: {', '.join(added) or 'none'}; removed: "
            f"{', '.join(removed) or 'none'}",
        )
        for name, agent in self.agents.items():
            if agent.pending and not agent.config.enabled:
                what = "removed" if agent.removed else "disabled"
                self._notice(
                    Level.WARNING,
                    "reload",
                    f"{what}: its {len(agent.pending)} queued event(s) are kept in "
                    "state_dir and delivered if it comes back",
                    name,
                )

    def _notice(self, level: Level, topic: str, message: str, agent: str | None = None) -> None:
        self.publish(Notice(level=level, topic=topic, message=message, agent=agent))
