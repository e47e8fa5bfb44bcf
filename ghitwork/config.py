"""The configuration as frozen dataclasses, and `load_config` to read ghit-work.toml.

Every mistake raises ConfigError naming the file and the key path, so the command line can
print one line such as `ghit-work.toml: agents.codex.cmd: expected a non-empty list of strings`.
The checks themselves are in configread.py.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ghitwork import prompt
from ghitwork.durations import Budget, SpendBudget
from ghitwork.prompt import PromptTemplate
from ghitwork.usage import Price

DEFAULT_CONFIG = "ghit-work.toml"
DEFAULT_RETRY = 300.0
DEFAULT_TAIL_CMD = ("ghit-cli", "tail-events")
DEFAULT_RUN_ATTEMPTS = 3
DEFAULT_RUN_BACKOFF = 30.0
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
    run_attempts: int = DEFAULT_RUN_ATTEMPTS
    run_backoff: float = DEFAULT_RUN_BACKOFF
    stall_timeout: float | None = None
    rate_limit_pattern: re.Pattern[str] | None = None
    usage_patterns: tuple[re.Pattern[str], ...] = ()
    usage_totals: str = "run"  # or "session"
    price: Price | None = None
    cost_budget: SpendBudget | None = None
    token_budget: SpendBudget | None = None


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
    run_attempts: int = DEFAULT_RUN_ATTEMPTS
    run_backoff: float = DEFAULT_RUN_BACKOFF
    cost_budget: SpendBudget | None = None
    token_budget: SpendBudget | None = None
    http: str | None = None  # "HOST:PORT", checked by parse_http_address

    @property
    def enabled_agents(self) -> tuple[AgentConfig, ...]:
        return tuple(agent for agent in self.agents if agent.enabled)

    def agent(self, name: str) -> AgentConfig | None:
        for agent in self.agents:
            if agent.name == name:
                return agent
        return None

    def with_overrides(
        self, retry: float | None, limit: int | None, http: str | None = None
    ) -> Config:
        """The command line's --retry, --limit and --http win over the file."""
        return replace(
            self,
            retry=self.retry if retry is None else retry,
            limit=self.limit if limit is None else limit,
            http=self.http if http is None else http,
        )


def parse_http_address(text: str) -> tuple[str, int]:
    """ "HOST:PORT" ("[::1]:9090" for IPv6); ValueError with what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'"{text}" is not HOST:PORT (try "127.0.0.1:9090")')
    host = host.strip("[]")
    if not host:
        raise ValueError(f'"{text}" has no host; say which address, e.g. "127.0.0.1:{port}"')
    return host, int(port)


SECRET_NAMES = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")


def secret_values(environ: Mapping[str, str], config: Config) -> list[str]:
    """What must never be shown or served: the ghit token, and the values of variables named
    like a secret (`*TOKEN*`, `*KEY*`, ...) in ghit-work's environment and the agents' `env`
    (an agent that prints its API key in an error must not put it in a status line)."""
    found = {environ.get("GHIT_API_TOKEN", "")}
    for env in (environ, *(agent.env for agent in config.agents)):
        for name, value in env.items():
            if any(word in name.upper() for word in SECRET_NAMES) and len(value) >= 8:
                found.add(value)
    return sorted(value for value in found if value)


def subscription_union(agents: tuple[AgentConfig, ...]) -> tuple[list[str], list[str]]:
    """The scopes and kinds of the enabled agents, first-seen order, no duplicates."""
    scopes: dict[str, None] = {}
    kinds: dict[str, None] = {}
    for agent in agents:
        if agent.enabled:
            scopes.update(dict.fromkeys(agent.event_scopes))
            kinds.update(dict.fromkeys(agent.event_kinds))
    return list(scopes), list(kinds)


def command_problems(config: Config) -> list[ConfigError]:
    """The enabled agents' commands (`cmd`, `resume_cmd`) that cannot be found: `check`
    refuses them, a starting daemon warns (they may be installed later)."""
    problems = []
    for agent in config.enabled_agents:
        for key, argv in (("cmd", agent.cmd), ("resume_cmd", agent.resume_cmd)):
            problem = _find_command(argv[0], agent) if argv else None
            if problem:
                problems.append(
                    ConfigError(str(config.path), f"agents.{agent.name}.{key}", problem)
                )
    return problems


def _find_command(command: str, agent: AgentConfig) -> str | None:
    if "/" in command:
        path = agent.workdir / Path(command).expanduser()
        if not path.is_file():
            return f"{command}: no such file (relative paths start from workdir {agent.workdir})"
        if not os.access(path, os.X_OK):
            return f"{command}: not executable (chmod +x it)"
        return None
    own = "PATH" in agent.env
    search = agent.env["PATH"] if own else os.environ.get("PATH", os.defpath)
    if shutil.which(command, path=search) is None:
        where = "the agent's env PATH" if own else "PATH"
        return f"command not found: {command!r} is not on {where}; install it or give its full path"
    return None


def load_config(path: Path) -> Config:
    """Read and validate `path`; raises ConfigError."""
    from ghitwork.configread import Reader  # the validator is only needed to load

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


def kind_of(value: object) -> str:
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


def close_match(name: str, allowed: set[str]) -> str:
    match = difflib.get_close_matches(name, sorted(allowed), n=1)
    return f" (did you mean {match[0]!r}?)" if match else f" (known: {', '.join(sorted(allowed))})"
