"""The commands beside the daemon: `init`, `check`, `status`, `dead-letters` and `redeliver`
(the last three work whether or not an instance runs, and never race it)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ghitwork.app import control
from ghitwork.app.shutdown import Exit
from ghitwork.config.model import Config, ConfigError
from ghitwork.model.durations import format_duration
from ghitwork.model.formatting import id_ranges, iso
from ghitwork.persist.requests import current, request_redelivery
from ghitwork.persist.store import running_pid
from ghitwork.source.tail import tail_command


def list_command(state_dir: Path, as_json: bool, out: TextIO) -> int:
    letters = current(state_dir)
    if as_json:
        for letter in letters:
            print(json.dumps(letter.to_json(), ensure_ascii=False), file=out)
        return 0
    if not letters:
        print(f"no dead letters in {state_dir}", file=out)
        return 0
    for letter in letters:
        ids = letter.event_ids
        exit_status = "-" if letter.exit_status is None else str(letter.exit_status)
        # The conversation it belonged to (SPEC §12), in the agent's column as status lines say it.
        who = f"{letter.agent} [{letter.conversation}]" if letter.conversation else letter.agent
        print(
            f"{letter.id}\t{who}\t{iso(letter.time)}\tevents {id_ranges(ids)} ({len(ids)})"
            f"\t{letter.attempts} attempt{'s' if letter.attempts != 1 else ''}"
            f"\texit {exit_status}\t{letter.error}",
            file=out,
        )
    return 0


def redeliver_command(
    state_dir: Path, ids: Sequence[int], agent: str | None, out: TextIO, err: TextIO
) -> int:
    """Request the redelivery of `ids` (all when empty), limited to `agent`'s if given."""
    letters = {letter.id: letter for letter in current(state_dir)}
    for ident in ids:
        if ident not in letters:
            raise ConfigError(
                str(state_dir),
                None,
                f"no dead letter {ident} (ghit-work dead-letters lists them; one that was "
                "handed back already is no longer listed)",
            )
    chosen = [letters[i] for i in ids] if ids else list(letters.values())
    if agent is not None:
        for letter in chosen:
            if letter.agent != agent:
                print(
                    f"dead letter {letter.id} is {letter.agent}'s, not {agent}'s: left out",
                    file=err,
                )
        chosen = [letter for letter in chosen if letter.agent == agent]
    if not chosen:
        print("no dead letters to hand back", file=out)
        return 0
    request_redelivery(state_dir, [letter.id for letter in chosen])
    delivered = control.when(state_dir, "delivers them")
    count = sum(len(letter.events) for letter in chosen)
    names = ", ".join(str(letter.id) for letter in chosen)
    print(f"handed back dead letter(s) {names} ({count} event(s)); {delivered}", file=out)
    return 0


PROG = "ghit-work"
PRESETS = ("codex", "claude", "generic")
PROMPT_FILE = "prompt.md.j2"


def init(path: Path, out: TextIO, presets: Sequence[str] = PRESETS) -> int:
    """Write the example config at `path` (the [ghit-work] table, then one agent per preset)
    and its prompt template beside it; never overwrite."""
    from importlib import resources  # here: the daemon's start-up does not need it

    templates = resources.files("ghitwork") / "templates"
    config = templates.joinpath("ghit-work.toml").read_text(encoding="utf-8")
    # The container image sets GHIT_WORK_INIT_STATE_DIR to its state volume, so that a config
    # written there keeps its state on the volume, not beside the config (docs/container.md).
    state_dir = os.environ.get("GHIT_WORK_INIT_STATE_DIR", "")
    if state_dir:
        config = config.replace(
            'state_dir = ".ghit-work"\n', f"state_dir = {json.dumps(state_dir)}\n", 1
        )
    for preset in dict.fromkeys(presets):
        config += templates.joinpath(f"preset-{preset}.toml").read_text(encoding="utf-8")
    targets = {
        path: config,
        path.parent / PROMPT_FILE: templates.joinpath(PROMPT_FILE).read_text(encoding="utf-8"),
    }
    existing = [str(target) for target in targets if os.path.lexists(target)]
    if existing:
        raise ConfigError(
            existing[0],
            None,
            "already exists; ghit-work init never overwrites a file (choose "
            "another path with -c, or move it away)",
        )
    written: list[str] = []
    target, doing = path.parent, "cannot create this directory"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        doing = "cannot write"
        for target, text in targets.items():
            with open(target, "x", encoding="utf-8") as handle:
                handle.write(text)
            written.append(str(target))
    except OSError as error:  # one line naming the file, not a raw [Errno 13]
        for done in written:  # all or nothing: never half an example
            with contextlib.suppress(OSError):
                os.unlink(done)
        raise ConfigError(
            str(target),
            None,
            f"{doing}: {error.strerror or error} (as uid {os.getuid()}); make the directory "
            "writable for this user, or choose another path with -c",
        ) from None
    print(f"wrote {' and '.join(written)}", file=out)
    print(f"next: edit the agents, then `{PROG} check -c {path}`", file=out)
    return Exit.OK


def check(config: Config, out: TextIO) -> None:
    """Print what `ghit-work -c PATH` would run."""
    limit = "no cap" if config.limit == 0 else str(config.limit)
    print(f"config: {config.path}", file=out)
    print(
        f"limit: {limit}   retry: {format_duration(config.retry)}   state_dir: {config.state_dir}",
        file=out,
    )
    print(f"agents: {len(config.agents)} ({len(config.enabled_agents)} enabled)", file=out)
    for agent in config.agents:
        state = "enabled" if agent.enabled else "disabled"
        print(f"  {agent.name} ({state}, user {agent.username})", file=out)
        print(f"    cmd:      {shlex.join(agent.cmd)}", file=out)
        if agent.resume_cmd:
            print(f"    resume:   {shlex.join(agent.resume_cmd)}", file=out)
        print(f"    workdir:  {agent.workdir}", file=out)
        print(f"    scopes:   {', '.join(agent.event_scopes)}", file=out)
        print(f"    kinds:    {', '.join(agent.event_kinds)}", file=out)
        print(f"    budget:   {agent.budget or 'none'}", file=out)
        backoff = format_duration(agent.run_backoff)
        print(f"    attempts: {agent.run_attempts} (backoff {backoff}, doubling)", file=out)
        print(
            f"    timeout:  {format_duration(agent.timeout) if agent.timeout else 'none'}", file=out
        )
        print(f"    logdir:   {agent.logdir or 'none'}", file=out)
        if agent.usage_patterns:
            price = (
                "none"
                if agent.price is None
                else (f"${agent.price.input:g} in, ${agent.price.output:g} out per Mtok")
            )
            print(
                f"    usage:    {len(agent.usage_patterns)} pattern(s), {agent.usage_totals} "
                f"totals, price {price}",
                file=out,
            )
        for name, spend in (("cost", agent.cost_budget), ("tokens", agent.token_budget)):
            if spend is not None:
                print(f"    {name + ':':<9} {spend}", file=out)
        print(f"    prompt:   {agent.prompt.origin}", file=out)
    if config.enabled_agents:
        argv = tail_command(config.tail_cmd, config.agents, None)
        print(f"tail-events: {shlex.join(argv)}", file=out)
    else:
        print("tail-events: not started (no enabled agent)", file=out)


def status(state_dir: Path, as_json: bool, out: TextIO, err: TextIO) -> int:
    """`ghit-work status`: the snapshot the running instance keeps in state_dir."""
    from ghitwork.observe import statusfile  # only this command reads it back

    deadline = time.monotonic() + 3.0
    while True:
        pid = running_pid(state_dir)
        if pid is None:
            print(f"{PROG}: error: no ghit-work is running on state_dir {state_dir}", file=err)
            return Exit.FAILURE
        current = statusfile.read(
            state_dir, report=lambda m: print(f"{PROG}: warning: {m}", file=err)
        )
        if current is not None and current.get("pid") in (pid, 1):
            break
        if time.monotonic() > deadline:  # just started: its first snapshot is not out yet
            print(f"{PROG}: error: ghit-work (pid {pid}) has written no status yet", file=err)
            return Exit.FAILURE
        time.sleep(0.05)
    if as_json:
        print(json.dumps(current, ensure_ascii=False), file=out)
    else:
        statusfile.render(current, out)
    return Exit.OK
