"""An agent's record of its conversations' workspaces (SPEC §12): which exist and where,
when each was last used, and the `workspace_keep` timers that remove an idle one.

flow/workspaces.py runs the commands that make and remove them; this side only remembers.
It knows its agent through `Owner`, a few attributes, not the Agent class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import msgspec

from ghitwork.bus.changes import Change, WorkspaceChanged
from ghitwork.config.model import AgentConfig
from ghitwork.flow.accounts import Schedule
from ghitwork.model.results import RunResult

# (the agent's config, conversation, workspace path, done(removed)) -> remove an idle
# workspace; `done(False)`: its teardown failed, the workspace is kept and tried again later
Teardown = Callable[[AgentConfig, str, str, Callable[[bool], None]], None]


class Workspace(msgspec.Struct):
    """A conversation's own workdir, made for it (SPEC §12)."""

    path: str
    used: float  # when a run of it last ended (or it was set up)


class Owner(Protocol):
    """What the record needs of its agent."""

    name: str
    config: AgentConfig
    stopping: bool
    clock: Callable[[], float]
    schedule: Schedule
    publish: Callable[[Change], None]

    def busy(self, key: str) -> bool:
        """`key` has a conversation with something queued, running or waiting."""
        ...

    def wake(self, key: str) -> bool:
        """`key`'s conversation, if it has one, may go on; False when it has none."""
        ...


class Workdirs:
    def __init__(self, owner: Owner, teardown: Teardown | None) -> None:
        self.owner = owner
        self.made: dict[str, Workspace] = {}  # conversation -> its workspace, made
        self.tearing_down: set[str] = set()  # conversations whose workspace is being removed
        self._teardown = teardown
        self._idle_timers: dict[str, Callable[[], None]] = {}  # workspace_keep, per workspace

    def needs_setup(self, key: str) -> bool:
        """Whether a run of `key` must make its workspace (or the shared one) first."""
        config = self.owner.config
        return config.makes_workspaces and config.workspace_of(key) not in self.made

    def using(self, key: str) -> None:
        """A run of `key` is about to start: its workspace is not idle."""
        cancel = self._idle_timers.pop(key, None)
        if cancel is not None:
            cancel()

    def set_up(self, key: str, path: str) -> None:
        """The workspace of `key` exists now (created, and set up)."""
        key = self.owner.config.workspace_of(key)
        workspace = self.made[key] = Workspace(path, self.owner.clock())
        self._announce(key, workspace, ready=True)

    def ran(self, key: str, result: RunResult) -> None:
        key = self.owner.config.workspace_of(key)
        workspace = self.made.get(key)
        if workspace is None:
            return
        workspace.used = result.ended or self.owner.clock()
        self._announce(key, workspace, ready=True, used=workspace.used)

    def restore(self, kept: Mapping[str, Workspace]) -> None:
        """Workspaces made before a restart: their idle time goes on from their last use."""
        self.made.update(kept)
        if self.owner.config.workspace_keep is None:
            return
        for key in kept:
            if not self.owner.busy(key):
                self.keep(key)

    def idle(self, key: str) -> None:
        """`key` has nothing to do for now: its workspace's idle time starts."""
        if self.owner.config.workspace_keep is not None and key in self.made:
            self.keep(key)

    def keep(self, key: str) -> None:
        keep = self.owner.config.workspace_keep
        workspace = self.made.get(key)
        if keep is None or workspace is None or key in self._idle_timers:
            return
        delay = max(0.0, workspace.used + keep - self.owner.clock())
        self._idle_timers[key] = self.owner.schedule(delay, lambda: self._expire(key))

    def cancel_timers(self) -> None:
        for cancel in self._idle_timers.values():
            cancel()
        self._idle_timers.clear()

    def _announce(
        self, key: str, workspace: Workspace, ready: bool, used: float | None = None
    ) -> None:
        self.owner.publish(
            WorkspaceChanged(
                agent=self.owner.name, conversation=key, path=workspace.path, ready=ready, used=used
            )
        )

    def _expire(self, key: str) -> None:
        """`workspace_keep` has passed since the last run of `key`: remove its workspace,
        unless a run of it is queued or running meanwhile."""
        self._idle_timers.pop(key, None)
        workspace = self.made.get(key)
        owner = self.owner
        if workspace is None or owner.busy(key) or self._teardown is None or owner.stopping:
            return
        self.tearing_down.add(key)

        def done(removed: bool) -> None:
            self.tearing_down.discard(key)
            if removed:
                self.made.pop(key, None)
                # with its last use: how long it was idle, for the status line
                self._announce(key, workspace, ready=False, used=workspace.used)
            else:  # kept, and tried again after another workspace_keep
                workspace.used = owner.clock()
            if not owner.wake(key) and not removed:
                self.keep(key)

        self._teardown(owner.config, key, workspace.path, done)
