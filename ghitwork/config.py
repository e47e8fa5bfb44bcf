"""Load and validate ghit-work.toml into frozen dataclasses.

Every mistake raises ConfigError naming the file and the key path, so the command line can
print one line such as `ghit-work.toml: agents.codex.cmd: expected a non-empty list of strings`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2

from ghitwork import prompt
from ghitwork.durations import Budget, DurationError, parse_budget, parse_duration
from ghitwork.prompt import PromptTemplate
from ghitwork.scopes import scope_problem

DEFAULT_CONFIG = "ghit-work.toml"
DEFAULT_RETRY = 300.0
DEFAULT_TAIL_CMD = ("ghit-cli", "tail-events")
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SCRUBBED_ENV = ("GHIT_API_URL", "GHIT_API_TOKEN")


class ConfigError(Exception):
    """A config mistake: `file: key: message`."""

    def __init__(self, file: str, key: str | None, message: str) -> None:
        super().__init__(message)
        self.file = file
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


@dataclass(frozen=True, eq=False)
class AgentConfig:
    name: str
    cmd: tuple[str, ...]
    username: str
    event_scopes: tuple[str, ...]
    event_kinds: tuple[str, ...]
    workdir: Path
    prompt: PromptTemplate
    logdir: Path | None = None
    enabled: bool = True
    resume_cmd: tuple[str, ...] | None = None
    session_id_pattern: re.Pattern[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None
    budget: Budget | None = None


@dataclass(frozen=True, eq=False)
class Config:
    path: Path
    agents: tuple[AgentConfig, ...]
    prompt: PromptTemplate = field(default_factory=prompt.default)
    retry: float = DEFAULT_RETRY
    limit: int = 0
    tail_cmd: tuple[str, ...] = DEFAULT_TAIL_CMD
    state_dir: Path = Path(".ghit-work")
    budget: Budget | None = None

    @property
    def enabled_agents(self) -> tuple[AgentConfig, ...]:
        return tuple(agent for agent in self.agents if agent.enabled)

    def agent(self, name: str) -> AgentConfig | None:
        for agent in self.agents:
            if agent.name == name:
                return agent
        return None

    def with_overrides(self, retry: float | None, limit: int | None) -> Config:
        """The command line's --retry and --limit win over the file."""
        return replace(
            self,
            retry=self.retry if retry is None else retry,
            limit=self.limit if limit is None else limit,
        )


def subscription_union(agents: tuple[AgentConfig, ...]) -> tuple[list[str], list[str]]:
    """The scopes and kinds of the enabled agents, first-seen order, no duplicates."""
    scopes: dict[str, None] = {}
    kinds: dict[str, None] = {}
    for agent in agents:
        if agent.enabled:
            scopes.update(dict.fromkeys(agent.event_scopes))
            kinds.update(dict.fromkeys(agent.event_kinds))
    return list(scopes), list(kinds)


GLOBAL_KEYS = {
    "agent_prompt",
    "agent_prompt_file",
    "retry",
    "limit",
    "tail_cmd",
    "state_dir",
    "budget",
}
AGENT_KEYS = {
    "cmd",
    "username",
    "workdir",
    "logdir",
    "event_scopes",
    "event_kinds",
    "enabled",
    "resume_cmd",
    "session_id_pattern",
    "env",
    "timeout",
    "budget",
    "agent_prompt",
    "agent_prompt_file",
}


class _Reader:
    """Validates one parsed file; every check names `self.file` and a key path."""

    def __init__(self, path: Path) -> None:
        self.file = str(path)
        self.base = path.parent

    def fail(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.file, key, message)

    def table(self, value: object, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_kind(value)}")
        return value

    def unknown(self, table: Mapping[str, Any], allowed: set[str], key: str) -> None:
        for name in table:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                hint = _close(name, allowed)
                raise self.fail(where, f"unknown key{hint}")

    def string(self, value: object, key: str, *, empty: bool = False) -> str:
        if not isinstance(value, str) or (not empty and not value.strip()):
            raise self.fail(key, f"expected a non-empty string, got {_kind(value)}")
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(item, str) and item for item in value)
        ):
            raise self.fail(key, "expected a non-empty list of strings")
        return tuple(value)

    def path(self, value: object, key: str) -> Path:
        return (self.base / Path(self.string(value, key)).expanduser()).resolve()

    def duration(self, value: object, key: str) -> float:
        try:
            return parse_duration(value)
        except DurationError as error:
            raise self.fail(key, str(error)) from None

    def budget(self, value: object, key: str) -> Budget:
        try:
            return parse_budget(value)
        except DurationError as error:
            raise self.fail(key, str(error)) from None

    def prompt(self, table: Mapping[str, Any], key: str, default: PromptTemplate) -> PromptTemplate:
        inline, path = table.get("agent_prompt"), table.get("agent_prompt_file")
        prefix = f"{key}." if key else ""
        if inline is not None and path is not None:
            raise self.fail(
                f"{prefix}agent_prompt_file",
                "agent_prompt and agent_prompt_file exclude each other; keep one",
            )
        if inline is not None:
            source = self.string(inline, f"{prefix}agent_prompt")
            try:
                return prompt.inline_template(source, f"{self.file}: {prefix}agent_prompt")
            except jinja2.TemplateSyntaxError as error:
                raise self.fail(f"{prefix}agent_prompt", prompt.describe_error(error)) from None
        if path is not None:
            file = self.path(path, f"{prefix}agent_prompt_file")
            try:
                return prompt.file_template(file)
            except OSError as error:
                reason = error.strerror or str(error)
                raise self.fail(f"{prefix}agent_prompt_file", f"{file}: {reason}") from None
            except jinja2.TemplateError as error:
                raise self.fail(
                    f"{prefix}agent_prompt_file", f"{file}: {prompt.describe_error(error)}"
                ) from None
        return default

    def scopes(self, value: object, key: str) -> tuple[str, ...]:
        scopes = self.strings(value, key)
        for index, scope in enumerate(scopes):
            problem = scope_problem(scope)
            if problem:
                raise self.fail(f"{key}[{index}]", problem)
        return tuple(dict.fromkeys(scopes))

    def agent(
        self, name: str, raw: object, default_prompt: PromptTemplate, budget: Budget | None
    ) -> AgentConfig:
        key = f"agents.{name}"
        if not AGENT_NAME.fullmatch(name):
            raise self.fail(
                key,
                "invalid agent name; use letters, digits, '.', '_' or '-' (at most 64, "
                "starting with a letter or digit)",
            )
        table = self.table(raw, key)
        self.unknown(table, AGENT_KEYS, key)
        for required in ("cmd", "username", "event_scopes", "event_kinds"):
            if required not in table:
                raise self.fail(f"{key}.{required}", "missing (required for every agent)")
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            raise self.fail(f"{key}.enabled", f"expected true or false, got {_kind(enabled)}")
        pattern = None
        if "session_id_pattern" in table:
            pattern = self.regex(table["session_id_pattern"], f"{key}.session_id_pattern")
        resume_cmd = None
        if "resume_cmd" in table:
            resume_cmd = self.strings(table["resume_cmd"], f"{key}.resume_cmd")
            if pattern is None:
                raise self.fail(
                    f"{key}.resume_cmd",
                    "needs session_id_pattern to find the session id to resume",
                )
        env = self.table(table.get("env", {}), f"{key}.env")
        for env_name, env_value in env.items():
            if not isinstance(env_value, str):
                raise self.fail(
                    f"{key}.env.{env_name}", f"expected a string, got {_kind(env_value)}"
                )
        return AgentConfig(
            name=name,
            cmd=self.strings(table["cmd"], f"{key}.cmd"),
            username=self.string(table["username"], f"{key}.username"),
            event_scopes=self.scopes(table["event_scopes"], f"{key}.event_scopes"),
            event_kinds=tuple(
                dict.fromkeys(self.strings(table["event_kinds"], f"{key}.event_kinds"))
            ),
            workdir=self.path(table.get("workdir", "."), f"{key}.workdir"),
            logdir=self.path(table["logdir"], f"{key}.logdir") if "logdir" in table else None,
            enabled=enabled,
            resume_cmd=resume_cmd,
            session_id_pattern=pattern,
            env=dict(env),
            timeout=self.positive(table["timeout"], f"{key}.timeout")
            if "timeout" in table
            else None,
            budget=self.budget(table["budget"], f"{key}.budget") if "budget" in table else budget,
            prompt=self.prompt(table, key, default_prompt),
        )

    def positive(self, value: object, key: str) -> float:
        seconds = self.duration(value, key)
        if seconds <= 0:
            raise self.fail(key, f"{value!r} is not longer than zero")
        return seconds

    def regex(self, value: object, key: str) -> re.Pattern[str]:
        source = self.string(value, key)
        try:
            pattern = re.compile(source)
        except re.error as error:
            raise self.fail(key, f"not a valid regular expression: {error}") from None
        if pattern.groups < 1:
            raise self.fail(key, "needs a group for the session id, e.g. 'session id: (\\S+)'")
        return pattern

    def config(self, path: Path, data: dict[str, Any]) -> Config:
        self.unknown(data, {"ghit-work", "agents"}, "")
        top = self.table(data.get("ghit-work", {}), "ghit-work")
        self.unknown(top, GLOBAL_KEYS, "ghit-work")
        limit = top.get("limit", 0)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise self.fail("ghit-work.limit", f"expected an integer 0 or more, got {_kind(limit)}")
        budget = self.budget(top["budget"], "ghit-work.budget") if "budget" in top else None
        default_prompt = self.prompt(top, "ghit-work", prompt.default())
        agents_table = self.table(data.get("agents", {}), "agents")
        if not agents_table:
            raise self.fail("agents", "no agent defined; add an [agents.NAME] table")
        seen: dict[str, str] = {}
        agents = []
        for name, raw in agents_table.items():
            folded = name.lower()
            if folded in seen:
                raise self.fail(
                    f"agents.{name}", f"duplicate agent name (same as agents.{seen[folded]})"
                )
            seen[folded] = name
            agents.append(self.agent(name, raw, default_prompt, budget))
        return Config(
            path=path,
            agents=tuple(agents),
            prompt=default_prompt,
            retry=self.duration(top.get("retry", DEFAULT_RETRY), "ghit-work.retry"),
            limit=limit,
            tail_cmd=self.strings(
                top.get("tail_cmd", list(DEFAULT_TAIL_CMD)), "ghit-work.tail_cmd"
            ),
            state_dir=self.path(top.get("state_dir", ".ghit-work"), "ghit-work.state_dir"),
            budget=budget,
        )


def load_config(path: Path) -> Config:
    """Read and validate `path`; raises ConfigError."""
    reader = _Reader(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise reader.fail(
            None, 'no such file (write an example with "ghit-work init", or pass -c PATH)'
        ) from None
    except IsADirectoryError:
        raise reader.fail(None, "is a directory, not a config file") from None
    except OSError as error:
        raise reader.fail(None, f"cannot read: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise reader.fail(None, f"invalid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise reader.fail(None, f"invalid TOML: not UTF-8 ({error.reason})") from None
    return reader.config(path, data)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if value else "an empty string"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _close(name: str, allowed: set[str]) -> str:
    import difflib

    match = difflib.get_close_matches(name, sorted(allowed), n=1)
    return f" (did you mean {match[0]!r}?)" if match else f" (known: {', '.join(sorted(allowed))})"
