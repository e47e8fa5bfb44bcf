"""What one run is, decided before it starts: a pure function of the agent's config, its
batch and where the batch stands (its session, its attempt). The agent's state machine
(flow/agent.py) asks for it when the run gets its slot; run/invocation.py runs it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from ghitwork.config import prompt
from ghitwork.config.model import SCRUBBED_ENV, AgentConfig
from ghitwork.model.conversations import slug
from ghitwork.model.events import Event, objects


class TemplateFailed(Exception):
    """The prompt template could not be rendered for this batch: the run's fault."""


def fault_text(error: BaseException) -> str:
    """An exception as a run's one-line fault: the message, or the type where it says more."""
    if isinstance(error, TemplateFailed):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror + (f": {error.filename}" if error.filename else "")
    else:
        lines = str(error).splitlines()
        text = lines[0][:300] if lines else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RunSpec(msgspec.Struct, frozen=True):
    argv: tuple[str, ...]
    prompt: str
    env: Mapping[str, str]
    event_ids: tuple[int, ...]
    attempt: int = 1
    session_id: str | None = None  # the session it resumes (None: a fresh one)
    workdir: Path = Path(".")
    conversation: str = ""  # SPEC §12
    # Make the conversation's workspace first (create `workdir`, run this setup command in
    # it, which may be empty); None: the workdir is there already.
    setup: tuple[str, ...] | None = None

    @property
    def resumed(self) -> bool:
        return self.session_id is not None


def agent_environment(
    base: Mapping[str, str], extra: Mapping[str, str], name: str, conversation: str = ""
) -> dict[str, str]:
    """ghit-work's environment without the ghit credentials, plus the agent's `env`, its
    name and its conversation (`""` for the agent's own)."""
    env = {key: value for key, value in base.items() if key not in SCRUBBED_ENV}
    env.update(extra)
    env["GHIT_WORK_AGENT"] = name
    env["GHIT_WORK_CONVERSATION"] = conversation
    return env


def prepare(
    config: AgentConfig,
    batch: Sequence[Event],
    environ: Mapping[str, str],
    *,
    session_id: str | None = None,
    attempt: int = 1,
    redelivered: bool = False,
    conversation: str = "",
    setup: bool = False,
) -> RunSpec:
    """The run of `batch`: its prompt (the template rendered; TemplateFailed when it cannot
    be), its argv (`resume_cmd` with the session id when one is known and the agent has
    one), its environment, its workdir (the conversation's own with `{conversation_slug}`), and
    with `setup` the command that makes its workspace first."""
    resumed = session_id if config.resume_cmd is not None else None
    workdir = config.workdir_for(conversation)
    context = {
        "agent": {"name": config.name, "username": config.username, "workdir": str(workdir)},
        "conversation": conversation,
        "events": objects(batch, config.prompt.fields),
        "session_id": session_id,
        "resumed": resumed is not None,
        "redelivered": redelivered,
        "attempt": attempt,
    }
    try:
        text = config.prompt.render(context)
    except Exception as error:  # a template may raise anything: that run fails (§11)
        raise TemplateFailed(
            f"prompt template {config.prompt.origin} failed: {prompt.describe_error(error)}"
        ) from None
    if resumed is not None and config.resume_cmd is not None:
        argv = tuple(part.replace("{session_id}", resumed) for part in config.resume_cmd)
    else:
        argv = tuple(config.cmd)
    return RunSpec(
        argv=argv,
        prompt=text,
        env=agent_environment(environ, config.env, config.name, conversation),
        event_ids=tuple([event.id for event in batch]),
        attempt=attempt,
        session_id=resumed,
        workdir=workdir,
        conversation=conversation,
        setup=workspace_setup(config, conversation) if setup else None,
    )


def workspace_setup(config: AgentConfig, conversation: str) -> tuple[str, ...]:
    """`workspace_setup` with `{conversation_slug}` and `{conversation}` filled in (empty:
    the workspace is only created)."""
    return _filled(config.workspace_setup or (), conversation)


def workspace_teardown(config: AgentConfig, conversation: str) -> tuple[str, ...]:
    return _filled(config.workspace_teardown or (), conversation)


def _filled(argv: Sequence[str], conversation: str) -> tuple[str, ...]:
    name = slug(conversation)
    return tuple(
        part.replace("{conversation_slug}", name).replace("{conversation}", conversation)
        for part in argv
    )
