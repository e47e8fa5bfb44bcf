"""The agents' side of the pipeline: every agent and its conversations' mailboxes, the
launch of their runs (and of their workspaces), and the dead letters.

`Dispatcher` owns every `Agent` (agent.py), turns a batch into an `Invocation`, keeps the dead
letters, and publishes each change on the state bus. All of it runs on the asyncio loop's
thread, so nothing here needs a lock.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import reactivex
from msgspec.structs import replace
from reactivex import Observable

from ghitwork.bus.changes import (
    Change,
    DeadLettersRedelivered,
    EventsRouted,
    Level,
    Notice,
    Route,
)
from ghitwork.config import prompt
from ghitwork.config.model import AgentConfig, Config, secret_values
from ghitwork.flow import durable
from ghitwork.flow.accounts import Accounts
from ghitwork.flow.agent import Agent, call_later
from ghitwork.flow.letters import DeadLetters
from ghitwork.flow.routing import Matcher, Pair
from ghitwork.flow.workspaces import Workspaces
from ghitwork.model.conversations import shown as shown_conversation
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.events import Event, to_event
from ghitwork.model.redact import Redactor
from ghitwork.model.results import RunResult
from ghitwork.model.usage import Ledger, Pricing
from ghitwork.persist.saved import Saved
from ghitwork.run.invocation import Invocation, Why
from ghitwork.run.output import Patterns
from ghitwork.run.spec import RunSpec, fault_text
from ghitwork.system.children import Children


class Dispatcher:
    """Owns the agents, the matcher and the running invocations."""

    def __init__(
        self,
        config: Config,
        publish: Callable[[Change], None],
        environ: Mapping[str, str] | None = None,
        children: Children | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.config = config
        self.publish = publish
        self.environ = dict(os.environ if environ is None else environ)
        # The one redactor of every surface (redact.py): runs' archives, dead letters' text.
        self.redactor = redactor or Redactor(secret_values(self.environ, config))
        self.children = children or Children(None)
        self.matcher = Matcher(config.agents)
        self.agents: dict[str, Agent] = {}
        self.running: dict[tuple[str, str], Invocation] = {}  # (agent, conversation)
        self.letters = DeadLetters(self.redactor.text)
        self.ledger = Ledger()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.workspaces = Workspaces(self.environ, self.redactor, self.children, self._notice)
        self.accounts = Accounts(self._publish, self._members, call_later)
        for agent in config.agents:
            self.agent(agent.name)

    def agent(self, name: str) -> Agent:
        agent = self.agents.get(name)
        if agent is None:
            agent_config = self.config.agent(name)
            agent = self._agent(agent_config) if agent_config else self._removed_agent(name)
        return agent

    def mailbox(self, name: str) -> Agent:
        return self.agent(name)

    def split(self, name: str, events: Sequence[Event]) -> list[tuple[str, tuple[Event, ...]]]:
        return self.agent(name).split(events)

    def _members(self, account: str) -> list[str]:
        """The agents whose usage limit is `account`'s (SPEC §14)."""
        return [
            name
            for name, agent in self.agents.items()
            if not agent.removed and agent.config.quota_account == account
        ]

    def concurrency(self, name: str) -> int:
        """How many runs of agent `name` may work at once (0: no cap of its own): its
        `concurrency` in thread mode, one in agent mode (SPEC §3), which also holds the one
        conversation's run while runs of its threads finish after a reload to agent mode."""
        agent = self.agents.get(name)
        if agent is None:
            return 0
        return agent.config.concurrency if agent.config.threads else 1

    def _agent(self, config: AgentConfig) -> Agent:
        agent = Agent(
            config,
            self.launch,
            self._publish,
            letters=self.letters,
            ledger=self.ledger,
            environ=self.environ,
            teardown=self.workspaces.teardown,
            accounts=self.accounts,
        )
        self.agents[config.name] = agent
        return agent

    def route(self, event: Event) -> tuple[str, ...]:
        return self.matcher.match(event)

    def routed(self, routes: tuple[Route, ...], pairs: tuple[Pair, ...]) -> None:
        self.publish(EventsRouted(routes=routes, deliveries=pairs))

    def launch(self, config: AgentConfig, spec: RunSpec) -> Observable[RunResult]:
        """Start `spec` (what the agent decided to run): the invocation, with what only the
        dispatcher knows (the secrets, the process group registry, the usage so far)."""
        invocation = Invocation(
            agent=config.name,
            argv=spec.argv,
            prompt=spec.prompt,
            workdir=spec.workdir,
            env=spec.env,
            event_ids=spec.event_ids,
            timeout=config.timeout,
            stall_timeout=config.stall_timeout,
            logdir=config.logdir,
            patterns=Patterns(
                config.session_id_pattern,
                config.rate_limit_pattern,
                config.usage_patterns,
                config.needs_input_pattern,
            ),
            resumed=spec.resumed,
            attempt=spec.attempt,
            secrets=self.redactor.secrets,
            forward=None if config.logdir else self._forwarder(config.name),
            on_start=lambda pgid: self.children.add(pgid, f"agent {config.name}", soon=True),
            on_gone=self.children.remove,
            pricing=Pricing(
                config.usage_totals,
                config.price,
                self.ledger.sessions_of(config.name),
                spec.session_id,
                spec.conversation,
            ),
            conversation=spec.conversation,
        )
        key = (config.name, spec.conversation)
        self.running[key] = invocation
        spec = replace(spec, prompt="")  # the invocation has it, until it is written

        async def run() -> RunResult:
            fault = None
            try:
                if spec.setup is not None:
                    fault = await self.workspaces.make(self.agents.get(config.name), config, spec)
                if fault is None:
                    result = await invocation.run()
                    if result.charge is not None:
                        self.ledger.apply(result.charge)  # once; the journal writes it at the end
                    return result
            except Exception as error:  # that run's fault, never the pipeline's
                fault = fault_text(error)
            finally:
                self.running.pop(key, None)
            return RunResult.of_fault(
                config.name,
                invocation.event_ids,
                invocation.argv,
                time.time(),
                fault,
                pid=invocation.pid,
                resumed=spec.resumed,
                attempt=invocation.attempt,
                conversation=spec.conversation,
            )

        if spec.setup is None:
            invocation.start()  # now, not when the task first runs: before the bookkeeping
        task = asyncio.ensure_future(run())

        def ended(task: asyncio.Future[RunResult]) -> None:
            if task.cancelled():  # perhaps before it began (its subscription disposed)
                invocation.abandon()  # then its agent is ended, not orphaned
                if self.running.get(key) is invocation:
                    del self.running[key]

        task.add_done_callback(ended)
        return reactivex.from_future(task)

    def _forwarder(self, name: str) -> Callable[[str, str], None]:
        def forward(stream: str, line: str) -> None:
            self._notice(Level.INFO, f"agent.{stream}", line, name)

        return forward

    def terminate(self, name: str, why: Why = Why.OPERATOR) -> int | None:
        """SIGTERM the agent's running invocation (SIGKILL after a grace period); its pid.
        Stopped by the operator (`k`), the run is not retried: its batch becomes a dead
        letter at once. Stopped because ghit-work stops, its batch comes again. Every running
        conversation of the agent is stopped; the pid of one of them is returned."""
        pid = None
        for (agent, _), invocation in list(self.running.items()):
            if agent == name:
                invocation.terminate(why)
                pid = invocation.pid if pid is None else pid
        return pid

    # -- dead letters
    @property
    def dead_letters(self) -> dict[int, DeadLetter]:
        return self.letters.kept

    def redeliver(self, ids: Sequence[int], by: str) -> tuple[int, list[Pair]]:
        """Hand dead letters back; ids no longer in the list are skipped. How many, and their
        events per conversation. Journaled before this returns; the caller injects the pairs
        into the flow (which gives a conversation without a group one), or queues them when
        the flow no longer takes any."""
        letters = self.letters.hand_back(ids)
        if not letters:
            return 0, []
        self.publish(DeadLettersRedelivered(letters=letters, by=by))
        # Per agent, every letter's events at once, in id order: handed back together, they
        # are queued together (one batch per conversation), not one letter's run at a time.
        handed: dict[str, dict[int, Event]] = {}
        for letter in letters:
            found = handed.setdefault(letter.agent, {})
            for data in letter.events:
                event = to_event(data, b"")
                if isinstance(event, Event):
                    found[event.id] = event
        pairs: list[Pair] = []
        for name, found in handed.items():
            events = [found[ident] for ident in sorted(found)]
            # the agent is told of them all (`redelivered`)
            pairs.append((name, durable.requeue(self.agent(name), events, found.keys())))
        return len(letters), pairs

    def refuse_new_runs(self) -> None:
        """No agent starts a run from now on; requests waiting for a slot fall through."""
        for agent in self.agents.values():
            agent.stopping = True

    async def stop(self) -> None:
        """No new runs; terminate the running ones and wait until every agent is idle."""
        self.refuse_new_runs()
        self.accounts.cancel_timers()
        for agent in self.agents.values():
            agent.cancel_timers()
        for name in {name for name, _ in self.running}:
            self.terminate(name, Why.STOPPING)
        await self.wait_idle()

    async def wait_idle(self) -> None:
        """Until no agent has a run working (queued requests are dropped by `stopping`), and
        no workspace is being removed (a removal cut short by the stop is done again at the
        next start: the workspace is still in state_dir)."""
        if self.agents and any(agent.stopping for agent in self.agents.values()):
            self.workspaces.cancel()
        await self.workspaces.wait()
        while any(agent.working for agent in self.agents.values()):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def _publish(self, change: Change) -> None:
        """An agent's change goes on the bus; a stop waiting for every agent to be idle
        looks again."""
        self.publish(change)
        if self._idle_waiters:
            self._check_idle()

    def _check_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def queued(self) -> int:
        """Events waiting or in a run, counted once per agent (as a snapshot holds them)."""
        return sum(
            [
                len(conversation.pending) + len(conversation.batch)
                for agent in self.agents.values()
                for conversation in agent.conversations.values()
            ]
        )

    def waiting(self) -> int:
        """Events queued and not in a run, all agents."""
        return sum(len(c.pending) for a in self.agents.values() for c in a.conversations.values())

    def pending_events(self) -> dict[str, list[Event]]:
        found = {name: agent.pending for name, agent in self.agents.items()}
        return {name: events for name, events in found.items() if events}

    # -- durability and reload
    def restore(self, saved: Saved, handed_back: Collection[int] = ()) -> list[Pair]:
        """What the last run left (durable.restore): the saved events to deliver first;
        `handed_back`: dead letters a redelivery request waiting in state_dir names."""
        return durable.restore(self, saved, handed_back)

    def snapshot(self, cursor: int | None) -> Saved:
        """Everything a snapshot of state_dir holds now (durable.snapshot)."""
        return durable.snapshot(self, cursor)

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

    def running_names(self) -> list[str]:
        """The running conversations, as status lines name them."""
        return [
            shown_conversation(agent, conversation).removeprefix("agent ")
            for agent, conversation in self.running
        ]

    def reload(self, config: Config) -> None:
        """Apply a new config: added agents start receiving, removed or disabled ones finish
        their run and get nothing more (their events stay saved), changed ones use the new
        settings from their next batch."""
        self.config = config
        self.redactor.update(secret_values(self.environ, config))
        self.matcher = Matcher(config.agents)
        added = []
        for agent_config in config.agents:
            agent = self.agents.get(agent_config.name)
            if agent is None:
                self.agent(agent_config.name)
                added.append(agent_config.name)
                continue
            if agent.removed:
                added.append(agent_config.name)
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

    def _notice(
        self,
        level: Level,
        topic: str,
        message: str,
        agent: str | None = None,
        conversation: str = "",
    ) -> None:
        self.publish(
            Notice(
                level=level, topic=topic, message=message, agent=agent, conversation=conversation
            )
        )
