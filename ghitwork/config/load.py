"""Validate a parsed ghit-work.toml, key by key; every check names the file and the key."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import msgspec

from ghitwork.config import prompt
from ghitwork.config.model import (
    AGENT_NAME,
    DEFAULT_RETRY,
    DEFAULT_RUN_ATTEMPTS,
    DEFAULT_RUN_BACKOFF,
    DEFAULT_TAIL_CMD,
    AgentConfig,
    Config,
    kind_of,
)
from ghitwork.config.prompt import PromptTemplate
from ghitwork.config.sections import Sections
from ghitwork.model.durations import (
    Budget,
    SpendBudget,
)
from ghitwork.model.scopes import scope_problem
from ghitwork.model.usage import GROUPS as USAGE_GROUPS

GLOBAL_KEYS = {
    "agent_prompt",
    "agent_prompt_file",
    "retry",
    "limit",
    "tail_cmd",
    "state_dir",
    "budget",
    "run_attempts",
    "run_backoff",
    "cost_budget",
    "token_budget",
    "http",
    "http_max_connections",
    "http_token_file",
    "http_auth",
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
    "run_attempts",
    "run_backoff",
    "stall_timeout",
    "rate_limit_pattern",
    "usage_patterns",
    "usage_totals",
    "price",
    "cost_budget",
    "token_budget",
    "agent_prompt",
    "agent_prompt_file",
    "conversations",
    "concurrency",
    "workspace_setup",
    "workspace_teardown",
    "workspace_keep",
    "needs_input_pattern",
    "account",
}


class _Defaults(msgspec.Struct, frozen=True):
    """What [ghit-work] sets for every agent that does not set it itself."""

    prompt: PromptTemplate
    budget: Budget | None
    run_attempts: int
    run_backoff: float
    cost_budget: SpendBudget | None
    token_budget: SpendBudget | None


class Reader(Sections):
    """Validates one parsed file; every check names `self.file` and a key path."""

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

    def agent(self, name: str, raw: object, defaults: _Defaults) -> AgentConfig:
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
            raise self.fail(f"{key}.enabled", f"expected true or false, got {kind_of(enabled)}")
        pattern = None
        if "session_id_pattern" in table:
            pattern = self.regex(table["session_id_pattern"], f"{key}.session_id_pattern")
        needs_input = None
        if "needs_input_pattern" in table:
            needs_input = self.regex(
                table["needs_input_pattern"], f"{key}.needs_input_pattern", groups=("question",)
            )
        rate_limit = None
        if "rate_limit_pattern" in table:
            rate_limit = self.regex(
                table["rate_limit_pattern"],
                f"{key}.rate_limit_pattern",
                groups=("seconds", "reset"),
            )
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
                    f"{key}.env.{env_name}", f"expected a string, got {kind_of(env_value)}"
                )
            if not env_name or "=" in env_name or "\0" in env_name:
                raise self.fail(
                    f"{key}.env",
                    f"{env_name!r} is not a usable environment variable name "
                    "(empty, or holding '=' or a NUL byte)",
                )
            self.spawnable(env_value, f"{key}.env.{env_name}")
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
            budget=self.budget(table["budget"], f"{key}.budget")
            if "budget" in table
            else defaults.budget,
            run_attempts=self.attempts(table["run_attempts"], f"{key}.run_attempts")
            if "run_attempts" in table
            else defaults.run_attempts,
            run_backoff=self.duration(table["run_backoff"], f"{key}.run_backoff")
            if "run_backoff" in table
            else defaults.run_backoff,
            stall_timeout=self.positive(table["stall_timeout"], f"{key}.stall_timeout")
            if "stall_timeout" in table
            else None,
            rate_limit_pattern=rate_limit,
            usage_patterns=self.usage_patterns(table, key),
            usage_totals=self.usage_totals(table, key),
            price=self.price(table["price"], f"{key}.price") if "price" in table else None,
            cost_budget=self.spend(table, "cost_budget", key, defaults.cost_budget),
            token_budget=self.spend(table, "token_budget", key, defaults.token_budget),
            prompt=self.prompt(table, key, defaults.prompt),
            needs_input_pattern=needs_input,
            account=self.string(table["account"], f"{key}.account") if "account" in table else None,
            **self.conversations(table, key),
        )

    def usage_patterns(self, table: Mapping[str, Any], key: str) -> tuple[re.Pattern[str], ...]:
        raw = table.get("usage_patterns", [])
        where = f"{key}.usage_patterns"
        if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
            raise self.fail(where, "expected a list of regular expressions (strings)")
        patterns = []
        for index, source in enumerate(raw):
            pattern = self.regex(source, f"{where}[{index}]", groups=USAGE_GROUPS)
            if not pattern.groupindex:
                known = ", ".join(f"(?P<{g}>...)" for g in USAGE_GROUPS)
                raise self.fail(f"{where}[{index}]", f"captures nothing; name a group: {known}")
            patterns.append(pattern)
        return tuple(patterns)

    def usage_totals(self, table: Mapping[str, Any], key: str) -> str:
        value = table.get("usage_totals", "run")
        if value not in ("run", "session"):
            expected = 'expected "run" (per run) or "session" (the session\'s running totals)'
            raise self.fail(f"{key}.usage_totals", f"{expected}, got {kind_of(value)}")
        return str(value)

    def config(self, path: Path, data: dict[str, Any]) -> Config:
        self.unknown(data, {"ghit-work", "agents", "notify"}, "")
        top = self.table(data.get("ghit-work", {}), "ghit-work")
        self.unknown(top, GLOBAL_KEYS, "ghit-work")
        limit = top.get("limit", 0)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise self.fail(
                "ghit-work.limit", f"expected an integer 0 or more, got {kind_of(limit)}"
            )
        defaults = _Defaults(
            prompt=self.prompt(top, "ghit-work", prompt.default()),
            budget=self.budget(top["budget"], "ghit-work.budget") if "budget" in top else None,
            run_attempts=self.attempts(top["run_attempts"], "ghit-work.run_attempts")
            if "run_attempts" in top
            else DEFAULT_RUN_ATTEMPTS,
            run_backoff=self.duration(top["run_backoff"], "ghit-work.run_backoff")
            if "run_backoff" in top
            else DEFAULT_RUN_BACKOFF,
            cost_budget=self.spend(top, "cost_budget", "ghit-work", None),
            token_budget=self.spend(top, "token_budget", "ghit-work", None),
        )
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
            agents.append(self.agent(name, raw, defaults))
        return Config(
            path=path,
            agents=tuple(agents),
            prompt=defaults.prompt,
            retry=self.duration(top.get("retry", DEFAULT_RETRY), "ghit-work.retry"),
            limit=limit,
            tail_cmd=self.strings(
                top.get("tail_cmd", list(DEFAULT_TAIL_CMD)), "ghit-work.tail_cmd"
            ),
            state_dir=self.path(top.get("state_dir", ".ghit-work"), "ghit-work.state_dir"),
            budget=defaults.budget,
            run_attempts=defaults.run_attempts,
            run_backoff=defaults.run_backoff,
            cost_budget=defaults.cost_budget,
            token_budget=defaults.token_budget,
            http=self.http(top["http"], "ghit-work.http") if "http" in top else None,
            http_max_connections=self.attempts(
                top.get("http_max_connections", 256), "ghit-work.http_max_connections"
            ),
            notify=self.notify(data.get("notify", []), {agent.name for agent in agents}),
            **self.http_control(top),
        )


def load_config(path: Path) -> Config:
    """Read and validate `path`; raises ConfigError."""
    reader = Reader(path)
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
