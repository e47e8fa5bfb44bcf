"""The conversations' workspaces (SPEC §12), made before a conversation's first run and
removed once idle for `workspace_keep`, their commands run off the loop's path
(run/workspace.py runs them; this side knows the agents, the secrets and the process groups).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

from ghitwork.bus.changes import Level
from ghitwork.config.model import AgentConfig
from ghitwork.flow.agent import Agent
from ghitwork.model.conversations import shown
from ghitwork.model.redact import Redactor
from ghitwork.run import workspace
from ghitwork.run.spec import RunSpec, agent_environment, workspace_teardown
from ghitwork.system.children import Children

Notice = Callable[[Level, str, str, str | None, str], None]  # ..., agent, conversation


class Workspaces:
    def __init__(
        self, environ: Mapping[str, str], redactor: Redactor, children: Children, notice: Notice
    ) -> None:
        self.environ = environ
        self.redactor = redactor
        self.children = children
        self.notice = notice
        self.tasks: set[asyncio.Task[None]] = set()  # removals under way
        self._shared: dict[str, asyncio.Lock] = {}  # agent -> its shared workdir's setup

    async def make(self, agent: Agent | None, config: AgentConfig, spec: RunSpec) -> str | None:
        """A conversation's workspace before its first run: created, then `workspace_setup`
        run in it. What went wrong, as the run's fault, or None. A workdir the agent's
        conversations share is set up once: a run that finds its setup under way waits for
        it (a conversation's own needs no such care: it runs one at a time)."""
        if agent is None or config.workspaces:
            return await self._make(agent, config, spec)
        async with self._shared.setdefault(config.name, asyncio.Lock()):
            if not agent.workdirs.needs_setup(spec.conversation):
                return None  # set up while this run waited
            return await self._make(agent, config, spec)

    async def _make(self, agent: Agent | None, config: AgentConfig, spec: RunSpec) -> str | None:
        assert spec.setup is not None
        made = await workspace.make(
            spec.workdir,
            spec.setup,
            spec.env,
            self.redactor.secrets,
            lambda pgid: self.children.add(pgid, f"agent {config.name} workspace_setup"),
            self.children.remove,
            workspace_teardown(config, spec.conversation),
        )
        if made is not None:
            return made
        if agent is not None:
            agent.workdirs.set_up(spec.conversation, str(spec.workdir))
        return None

    def teardown(
        self, config: AgentConfig, conversation: str, path: str, done: Callable[[bool], None]
    ) -> None:
        """Remove an idle workspace (`workspace_teardown` in it first), off the loop's path;
        `done(removed)` when it is over."""
        who = shown(config.name, conversation)

        async def remove() -> None:
            env = agent_environment(self.environ, config.env, config.name, conversation)
            problem = await workspace.remove(
                Path(path),
                workspace_teardown(config, conversation),
                env,
                self.redactor.secrets,
                lambda pgid: self.children.add(pgid, f"{who} workspace_teardown"),
                self.children.remove,
            )
            if problem is not None:
                self.notice(
                    Level.WARNING,
                    "workspace",
                    f"{problem}; the workspace {path} is kept and tried again after workspace_keep",
                    config.name,
                    conversation,
                )
            done(problem is None)

        task = asyncio.ensure_future(remove())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cancel(self) -> None:
        """A stop: removals under way are cut short (their workspace stays in state_dir, and
        the next start removes it)."""
        for task in self.tasks:
            task.cancel()

    async def wait(self) -> None:
        while self.tasks:
            await asyncio.wait(set(self.tasks))
