"""Pause and resume (SPEC §13): the `pause` and `resume` commands, which leave a request in
state_dir (persist/requests.py), and the running instance's side, which applies each request
in the order it was written (within 2 s; at a start, before any saved event is delivered).
The TUI's `p` and the HTTP control routes call the same `pause` and `resume`.

    ghit-work pause AGENT... [--all] [--for DURATION] [--reason TEXT]
    ghit-work resume AGENT [CONVERSATION]... [--all]

A resume lifts an agent's pause and wakes its conversations that wait in needs-input; given
a conversation (a `thread:` scope, or "" for the agent's own), only that conversation is
woken and a pause stays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from ghitwork.bus.changes import Level, StateBus
from ghitwork.config.model import Config, ConfigError
from ghitwork.flow.agent import Paused
from ghitwork.flow.dispatch import Dispatcher
from ghitwork.model.conversations import shown
from ghitwork.model.durations import clock_time, format_duration
from ghitwork.persist import requests
from ghitwork.persist.lock import running_pid


def _names(config: Config, agents: Sequence[str], every: bool, command: str) -> list[str]:
    known = [agent.name for agent in config.agents]
    if every and agents:
        raise ConfigError(command, None, "takes agent names or --all, not both")
    if not every and not agents:
        raise ConfigError(command, None, "needs agent names, or --all")
    for name in agents:
        if name not in known:
            raise ConfigError(
                str(config.path), None, f"no agent {name!r} (agents: {', '.join(known)})"
            )
    return known if every else list(dict.fromkeys(agents))


def when(state_dir: Path, what: str) -> str:
    """When a request left in `state_dir` is taken: by the running instance (it looks at
    its requests every second), or at the next start."""
    pid = running_pid(state_dir)
    if pid is not None:
        return f"ghit-work (pid {pid}) {what} within 2 s"
    return f"no ghit-work runs on this state_dir: the next start {what} first"


def pause_command(
    config: Config,
    agents: Sequence[str],
    every: bool,
    duration: float | None,
    reason: str,
    out: TextIO,
) -> int:
    names = _names(config, agents, every, "pause")
    until = None if duration is None else time.time() + duration
    payload: dict[str, object] = {"agents": names, "until": until, "reason": reason}
    requests.request_control(config.state_dir, "pause", payload)
    lasting = (
        "" if until is None else f" until {clock_time(until)} ({format_duration(duration or 0)})"
    )
    print(
        f"pause requested for {', '.join(names)}{lasting}: {when(config.state_dir, 'applies it')}",
        file=out,
    )
    return 0


def resume_command(config: Config, words: Sequence[str], every: bool, out: TextIO) -> int:
    """`words`: agent names, each optionally followed by conversations (`thread:...`): then
    only those conversations of it are woken."""
    targets: list[tuple[str, str | None]] = []
    for word in words:
        if not word.startswith("thread:"):
            targets.append((word, None))
            continue
        if not targets:
            raise ConfigError("resume", None, f"{word!r}: name its agent first")
        agent, conversation = targets[-1]
        if conversation is None:
            targets[-1] = (agent, word)
        else:
            targets.append((agent, word))
    names = _names(config, [agent for agent, _ in targets], every, "resume")
    if every:
        targets = [(name, None) for name in names]
    payload: dict[str, object] = {"targets": [[agent, c] for agent, c in targets]}
    requests.request_control(config.state_dir, "resume", payload)
    listed = ", ".join(agent if c is None else f"{agent} [{c}]" for agent, c in targets)
    print(f"resume requested for {listed}: {when(config.state_dir, 'applies it')}", file=out)
    return 0


# -- the running instance's side
def pause(
    dispatcher: Dispatcher, name: str, by: str, reason: str = "", until: float | None = None
) -> bool:
    """Pause agent `name` now; False when there is no such agent."""
    agent = dispatcher.agents.get(name)
    if agent is None or agent.removed:
        return False
    agent.pause(Paused(reason=reason, until=until, by=by, at=time.time()))
    return True


def resume(
    dispatcher: Dispatcher, name: str, by: str, conversation: str | None = None
) -> int | None:
    """Lift agent `name`'s pause and wake its conversations waiting for a human (only
    `conversation`, when named): how many it woke, or None when there is no such agent."""
    agent = dispatcher.agents.get(name)
    if agent is None or agent.removed:
        return None
    return agent.resume(by, conversation)


class Controls:
    """What the HTTP control routes do (http/web.py's Controls), on this instance."""

    def __init__(self, dispatcher: Dispatcher, redeliver: Callable[[str, str], int]) -> None:
        self.dispatcher = dispatcher
        self._redeliver = redeliver  # every dead letter of an agent handed back

    def pause(self, name: str, by: str, reason: str, until: float | None) -> bool:
        return pause(self.dispatcher, name, by, reason, until)

    def resume(self, name: str, by: str, conversation: str | None) -> int | None:
        return resume(self.dispatcher, name, by, conversation)

    def redeliver(self, name: str, by: str) -> int:
        return self._redeliver(name, by)

    def kill(self, name: str, by: str) -> bool:
        return self.dispatcher.terminate(name) is not None


def toggle(dispatcher: Dispatcher, name: str, by: str) -> bool:
    """Pause agent `name`, or resume it when it is paused (the TUI's `p`); paused now?"""
    agent = dispatcher.agents.get(name)
    if agent is None:
        return False
    if agent.paused is not None:
        resume(dispatcher, name, by)
        return False
    return pause(dispatcher, name, by)


def take_controls(
    state_dir: Path, dispatcher: Dispatcher, bus: StateBus, names: list[str] | None = None
) -> None:
    """Apply the pause and resume requests left in state_dir, oldest first; each is removed
    once its outcome is journaled (the journal writes a pause fsynced). `names`: the
    requests folder's listing, when already made."""
    for control in requests.pending_controls(
        state_dir, lambda message: bus.notice(Level.WARNING, "control", message), names
    ):
        by = f"ghit-work {control.kind}"
        data = control.data
        missing = []
        if control.kind == "pause":
            until = data.get("until")
            when = float(until) if isinstance(until, int | float) else None
            reason = str(data.get("reason") or "")
            for name in _strings(data.get("agents")):
                if not pause(dispatcher, name, by, reason, when):
                    missing.append(name)
        else:
            targets = data.get("targets")
            for target in targets if isinstance(targets, list) else []:
                who, conversation = (
                    [*target, None, None][:2] if isinstance(target, list) else ["", None]
                )
                named = conversation if isinstance(conversation, str) else None
                woken = resume(dispatcher, who, by, named) if isinstance(who, str) else None
                if woken is None:
                    missing.append(str(who))
                elif named is not None and not woken:
                    bus.notice(
                        Level.WARNING,
                        "control",
                        f"resume: {shown(str(who), named)} is not waiting for input: "
                        "nothing to wake",
                    )
        for name in missing:  # the config changed since the request was written
            bus.notice(Level.WARNING, "control", f"{control.kind}: no agent {name!r}: skipped")
        requests.consumed(control)


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []
