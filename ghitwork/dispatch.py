"""The agents' side of the pipeline: every agent's mailbox, the launch of its runs, and the
dead letters.

`Dispatcher` owns every `Agent` (agent.py), turns a batch into an `Invocation`, keeps the dead
letters, and publishes each change on the state bus. All of it runs on the asyncio loop's
thread, so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import reactivex
from reactivex import Observable

from ghitwork import prompt, usage
from ghitwork.agent import Agent, CannotStart
from ghitwork.children import Children
from ghitwork.config import AgentConfig, Config, secret_values
from ghitwork.deadletters import DeadLetter
from ghitwork.events import Event, objects, to_event
from ghitwork.output import Patterns
from ghitwork.results import RunResult
from ghitwork.routing import Matcher, Pair
from ghitwork.runner import Account, Invocation, Why, agent_environment
from ghitwork.saved import Saved, SavedAgent
from ghitwork.state import (
    AgentState,
    Change,
    DeadLettersLoaded,
    DeadLettersRedelivered,
    EventsRouted,
    Level,
    Notice,
    Route,
    UsageLoaded,
)
from ghitwork.usage import Ledger, Tally


class Dispatcher:
    """Owns the agents, the matcher and the running invocations."""

    def __init__(
        self,
        config: Config,
        publish: Callable[[Change], None],
        environ: Mapping[str, str] | None = None,
        children: Children | None = None,
    ) -> None:
        self.config = config
        self.publish = publish
        self.environ = dict(os.environ if environ is None else environ)
        self.secrets = secret_values(self.environ, config)
        self.children = children or Children(None)
        self.matcher = Matcher(config.agents)
        self.agents: dict[str, Agent] = {}
        self.running: dict[str, Invocation] = {}
        self.dead_letters: dict[int, DeadLetter] = {}
        self.next_dead_letter = 1
        self.ledger = Ledger()
        self._idle_waiters: list[asyncio.Future[None]] = []
        for agent in config.agents:
            self.mailbox(agent.name)

    def mailbox(self, name: str) -> Agent:
        agent = self.agents.get(name)
        if agent is None:
            agent_config = self.config.agent(name)
            assert agent_config is not None, f"no agent {name}"
            agent = self._agent(agent_config)
        return agent

    def _agent(self, config: AgentConfig) -> Agent:
        agent = Agent(config, self.launch, self.publish, self._check_idle, bury=self.bury)
        agent.spent = lambda: self.ledger.recent(config.name)
        self.agents[config.name] = agent
        return agent

    def route(self, event: Event) -> tuple[str, ...]:
        return self.matcher.match(event)

    def routed(self, routes: tuple[Route, ...]) -> None:
        self.publish(EventsRouted(routes=routes))

    def launch(self, agent: Agent, batch: list[Event]) -> Observable[RunResult]:
        config = agent.config
        resumed = agent.resumed
        context = {
            "agent": {
                "name": config.name,
                "username": config.username,
                "workdir": str(config.workdir),
            },
            "events": objects(batch, config.prompt.fields),
            "session_id": agent.session_id,
            "resumed": resumed,
            "redelivered": agent.was_redelivered(batch),
            "attempt": agent.tries.attempt,
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
            event_ids=tuple([event.id for event in batch]),
            timeout=config.timeout,
            stall_timeout=config.stall_timeout,
            logdir=config.logdir,
            patterns=Patterns(
                config.session_id_pattern, config.rate_limit_pattern, config.usage_patterns
            ),
            resumed=resumed,
            attempt=agent.tries.attempt,
            secrets=self.secrets,
            forward=None if config.logdir else self._forwarder(config.name),
            on_start=lambda pgid: self.children.add(pgid, f"agent {config.name}"),
            on_gone=self.children.remove,
            account=self._account(agent.session_id if resumed else None),
        )
        self.running[config.name] = invocation

        async def run() -> RunResult:
            try:
                return await invocation.run()
            finally:
                self.running.pop(config.name, None)

        return reactivex.from_future(asyncio.ensure_future(run()))

    def _account(self, resumed: str | None) -> Account:
        """How a run's usage is reckoned: for a session's running totals, against what the
        ledger holds for that session (the one it printed, or the one it resumed)."""

        def account(result: RunResult, tally: Tally) -> RunResult:
            config = self.agents[result.agent].config
            session = result.session_id or resumed
            charge = usage.charge(
                result.agent,
                tally,
                config.usage_totals,
                config.price,
                session,
                self.ledger.session_total(result.agent, session),
                result.ended,
            )
            if charge is None:
                return result
            self.ledger.apply(charge)  # the journal writes it with the RunFinished
            return replace(result, charge=charge)

        return account

    def _forwarder(self, name: str) -> Callable[[str, str], None]:
        def forward(stream: str, line: str) -> None:
            self._notice(Level.INFO, f"agent.{stream}", line, name)

        return forward

    def terminate(self, name: str, why: Why = Why.OPERATOR) -> int | None:
        """SIGTERM the agent's running invocation (SIGKILL after a grace period); its pid.
        Stopped by the operator (`k`), the run is not retried: its batch becomes a dead
        letter at once. Stopped because ghit-work stops, its batch comes again."""
        invocation = self.running.get(name)
        if invocation is None:
            return None
        invocation.terminate(why)
        return invocation.pid

    # -- dead letters
    def bury(self, agent: Agent, batch: Sequence[Event], result: RunResult) -> DeadLetter:
        """The batch failed for good: keep it as a dead letter (the journal writes it, fsynced,
        when the RunFinished carrying it is published)."""
        letter = DeadLetter(
            id=self.next_dead_letter,
            agent=agent.name,
            events=tuple(event.data for event in batch),
            attempts=result.attempt,
            exit_status=result.returncode,
            error=result.describe(),
            time=result.ended,
        )
        self.next_dead_letter += 1
        self.dead_letters[letter.id] = letter
        return letter

    def redeliver(self, ids: Sequence[int], by: str) -> list[Pair]:
        """Hand dead letters back; ids no longer in the list are skipped. Journaled before
        this returns; the caller injects the pairs into the flow (which gives an agent
        without a group one), or queues them when the flow no longer takes any."""
        letters = tuple(
            self.dead_letters.pop(i) for i in sorted(set(ids)) if i in self.dead_letters
        )
        if not letters:
            return []
        self.publish(DeadLettersRedelivered(letters=letters, by=by))
        pairs: list[Pair] = []
        for letter in letters:
            events = tuple(
                e for e in (to_event(data, b"") for data in letter.events) if isinstance(e, Event)
            )
            agent = self.agents.get(letter.agent) or self._removed_agent(letter.agent)
            agent.redelivered.update(event.id for event in events)
            pairs.append((letter.agent, events))
        return pairs

    def refuse_new_runs(self) -> None:
        """No agent starts a run from now on; requests waiting for a slot fall through."""
        for agent in self.agents.values():
            agent.stopping = True

    async def stop(self) -> None:
        """No new runs; terminate the running ones and wait until every agent is idle."""
        self.refuse_new_runs()
        for name in list(self.running):
            self.terminate(name, Why.STOPPING)
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

    def queued(self) -> int:
        """Events waiting or in a run, counted once per agent (as a snapshot holds them)."""
        return sum([len(agent.pending) + len(agent.batch) for agent in self.agents.values()])

    def pending_events(self) -> dict[str, list[Event]]:
        return {name: list(agent.pending) for name, agent in self.agents.items() if agent.pending}

    # -- durability and reload
    def restore(self, saved: Saved) -> list[Pair]:
        """Session ids and redelivery marks from the last run, and the saved events, to be
        delivered before anything new. Agents no longer in the config keep theirs, disabled."""
        pairs: list[Pair] = []
        self.ledger = saved.ledger
        if self.ledger.agents:
            self.publish(
                UsageLoaded(
                    totals={name: a.total for name, a in self.ledger.agents.items()},
                    days={name: dict(a.days) for name, a in self.ledger.agents.items()},
                )
            )
        self.dead_letters = {i: DeadLetter.from_record(d) for i, d in saved.dead.items()}
        self.next_dead_letter = max(saved.next_dead_letter, max(self.dead_letters, default=0) + 1)
        if self.dead_letters:
            self.publish(DeadLettersLoaded(letters=tuple(self.dead_letters.values())))
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
        agent = self._agent(config)
        agent.removed = True
        return agent

    def snapshot(self, cursor: int | None) -> Saved:
        saved = Saved(
            cursor=cursor,
            dead={i: letter.record() for i, letter in self.dead_letters.items()},
            next_dead_letter=self.next_dead_letter,
            ledger=self.ledger,
        )
        for name, agent in self.agents.items():
            events = [*agent.batch, *agent.pending]
            if not events and agent.session_id is None and not agent.runs:
                continue
            pending: dict[int, dict[str, Any] | Event] = {event.id: event for event in events}
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
        self.secrets = secret_values(self.environ, config)
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
