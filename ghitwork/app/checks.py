"""What `check` refuses and a start warns about or refuses: commands that cannot be found,
and `[[notify]]` without the `notify` extra (apprise)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping

from msgspec.structs import replace

from ghitwork.bus.changes import Level, StateBus
from ghitwork.config.model import Config, ConfigError, command_problems
from ghitwork.model.durations import format_duration
from ghitwork.notify import send
from ghitwork.source.tail import beside_ghit_work

STRONG_TOKEN = 16  # characters a control token should have, at least (shorter: a warning)


def tail_cmd_problem(config: Config, environ: Mapping[str, str]) -> ConfigError | None:
    """`tail_cmd`'s program when it cannot be found the way the daemon starts it (on PATH,
    or beside ghit-work; a path with `/` from the config's directory). Not a refusal: SPEC §1
    has init's config pass `check` wherever the agents' CLIs are installed, and §4 retries a
    tail-events that cannot start. `check` and a start say so plainly, as a warning."""
    if not config.enabled_agents:
        return None  # tail-events is not started
    search = environ.get("PATH", os.defpath)
    command = beside_ghit_work(config.tail_cmd[0], search)
    key = "ghit-work.tail_cmd"
    if os.sep not in command:
        if shutil.which(command, path=search) is not None:
            return None
        return ConfigError(
            str(config.path),
            key,
            f"command not found: {command!r} is not on PATH (nor beside ghit-work in "
            f"{os.path.dirname(sys.executable)}); install it or give its full path",
        )
    path = config.path.parent.resolve() / os.path.expanduser(command)
    if not path.is_file():
        return ConfigError(
            str(config.path),
            key,
            f"{command}: no such file (a relative path starts from the config's directory)",
        )
    if not os.access(path, os.X_OK):
        return ConfigError(str(config.path), key, f"{command}: not executable (chmod +x it)")
    return None


def check_problems(config: Config) -> list[ConfigError]:
    """What `check` refuses: an enabled agent's command that cannot be found (a start warns
    about it), a `[[notify]]` URL apprise cannot use."""
    return command_problems(config) + notify_problems(config, urls=True)


def tail_warning(problem: ConfigError, config: Config) -> str:
    """What `check` and a start say of a tail command that cannot be found."""
    return (
        f"{problem}; until it is, tail-events cannot start: a start retries it for the retry "
        f"window ({format_duration(config.retry)}), then exits 3"
    )


def notify_problems(config: Config, urls: bool = False) -> list[ConfigError]:
    """`[[notify]]` tables without apprise to send them (`check` refuses it, a start warns);
    with `urls`, each URL apprise cannot use (loading apprise's plugins takes half a
    second: `check` only)."""
    if not config.notify:
        return []
    if not send.available():
        message = f"[[notify]] is configured but apprise is not installed: {send.EXTRA}"
        return [ConfigError(str(config.path), "notify", message)]
    if not urls:
        return []
    found = []
    for index, target in enumerate(config.notify):
        problem = send.url_problem(target.url)
        if problem is not None:
            found.append(ConfigError(str(config.path), f"notify[{index}].url", problem))
    return found


def warn_at_start(config: Config, environ: Mapping[str, str], bus: StateBus) -> None:
    """What a start says of its config before anything runs: a tail command that cannot be
    found (said plainly, then retried as SPEC §4 says), the agents' commands, a weak token."""
    missing = tail_cmd_problem(config, environ)
    if missing is not None:
        bus.notice(Level.WARNING, "tail-events", tail_warning(missing, config))
    warn_missing_commands(config, bus)
    weak = weak_token(config)
    if weak is not None:
        bus.notice(Level.WARNING, "config", weak)


def warn_missing_commands(config: Config, bus: StateBus) -> None:
    """At start and at each reload: an agent whose command cannot be found is a warning (it
    may be installed later), not a refusal; so is `[[notify]]` without apprise."""
    for problem in command_problems(config):
        bus.notice(
            Level.WARNING,
            "config",
            f"{problem}; its runs fail until it is installed (checked again at each run)",
        )
    for problem in notify_problems(config):
        bus.notice(
            Level.WARNING,
            "config",
            f"{problem}; notifications wait in the outbox until it is installed",
        )


def weak_token(config: Config) -> str | None:
    """What `check` and a start say of a control token short enough to guess (it is read at
    start only, so a reload says nothing of it); never the token itself."""
    token = config.http_token
    if not token or len(token) >= STRONG_TOKEN:
        return None
    return (
        f"{config.path}: ghit-work.http_token_file: the token is only {len(token)} characters, "
        f"easy to guess; anyone who guesses it controls the agents (use at least "
        f"{STRONG_TOKEN}: `openssl rand -hex 32 > FILE`)"
    )


def kept_until_restart(old: Config, new: Config, bus: StateBus) -> Config:
    """A reloaded config with what takes effect only at the next start kept as it was (and
    said so)."""
    for key in ("state_dir", "http", "http_max_connections"):
        kept = getattr(old, key)
        if getattr(new, key) != kept:
            bus.notice(
                Level.WARNING, "reload", f"{key} stays {kept or 'off'} until ghit-work restarts"
            )
            new = replace(new, **{key: kept})
    return new


def reloadable(old: Config, new: Config, environ: Mapping[str, str]) -> Config:
    """`new`, unless it changes the tail command to one that does not exist: that is no
    retry away, so the reload is refused (ConfigError) and the old config stays."""
    if new.tail_cmd != old.tail_cmd:
        missing = tail_cmd_problem(new, environ)
        if missing is not None:
            raise missing
    return new
