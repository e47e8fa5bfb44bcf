"""The configuration as frozen values, msgspec Structs (config/load.py reads and checks the file).

Every mistake raises ConfigError naming the file and the key path, so the command line can
print one line such as `ghit-work.toml: agents.codex.cmd: expected a non-empty list of strings`.
The checks themselves are in configread.py.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import msgspec
from msgspec.structs import replace

from ghitwork.config import prompt
from ghitwork.config.prompt import PromptTemplate
from ghitwork.model.conversations import OWN, SLUG_PLACEHOLDER, workdir_of
from ghitwork.model.durations import Budget, SpendBudget
from ghitwork.model.usage import Price

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


class AgentConfig(msgspec.Struct, frozen=True, eq=False, dict=True):
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
    env: Mapping[str, str] = msgspec.field(default_factory=dict)
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
    conversations: str = "agent"  # or "thread" (SPEC §12)
    concurrency: int = 1  # conversations of this agent running at once
    workspace_setup: tuple[str, ...] | None = None  # run once in a new conversation's workdir
    workspace_teardown: tuple[str, ...] | None = None  # run before an idle one is removed
    workspace_keep: float | None = None  # seconds a workspace may stay idle (None: kept)
    # SPEC §13: a run whose output matches asks a human (group `question`: what it asks)
    needs_input_pattern: re.Pattern[str] | None = None
    account: str | None = None  # SPEC §14: agents sharing one subscription or API key

    @property
    def quota_account(self) -> str:
        """Whose usage limit closes this agent: its `account`, or the agent alone."""
        return self.account or self.name

    @property
    def threads(self) -> bool:
        """One conversation per thread (else one per agent)."""
        return self.conversations == "thread"

    @functools.cached_property
    def workspaces(self) -> bool:
        """Each conversation has its own workdir (`{conversation_slug}` in `workdir`)."""
        return SLUG_PLACEHOLDER in str(self.workdir)

    @functools.cached_property
    def makes_workspaces(self) -> bool:
        """Its runs make their workdir first: each conversation its own, or, the workdir
        shared, once for all with a `workspace_setup` (SPEC §12)."""
        return self.workspaces or self.workspace_setup is not None

    def workspace_of(self, conversation: str) -> str:
        """Whose workspace a run of `conversation` works in: its own, or the agent's."""
        return conversation if self.workspaces else OWN

    @functools.cached_property
    def budgeted(self) -> bool:
        """It has a run, cost or token budget (else no run is ever throttled)."""
        return not (self.budget is None and self.cost_budget is None and self.token_budget is None)

    def workdir_for(self, conversation: str) -> Path:
        if not self.workspaces:
            return self.workdir
        return Path(workdir_of(str(self.workdir), conversation))


NOTIFY_CAUSES = (
    "dead-letter",
    "needs-input",
    "throttled",
    "quota",
    "stream-failing",
    "stream-healthy",
    "paused",
    "internal-error",
)


class Notify(msgspec.Struct, frozen=True):
    """One `[[notify]]` table (SPEC §13): where (an Apprise URL), on what, for which agents
    (None: every agent; causes without an agent, like the stream's, always)."""

    url: str
    on: frozenset[str]
    agents: frozenset[str] | None = None

    def wants(self, cause: str, agent: str | None) -> bool:
        return cause in self.on and (self.agents is None or agent is None or agent in self.agents)


class Config(msgspec.Struct, frozen=True, eq=False):
    path: Path
    agents: tuple[AgentConfig, ...]
    prompt: PromptTemplate = msgspec.field(default_factory=prompt.default)
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
    http_max_connections: int = 256  # open HTTP connections at once; more are closed at once
    notify: tuple[Notify, ...] = ()  # SPEC §13
    http_token_file: Path | None = None  # the control routes' bearer token (SPEC §13)
    http_token: str | None = None  # read from http_token_file at load
    http_auth: str = "control"  # or "all": reads need the token too

    @property
    def enabled_agents(self) -> tuple[AgentConfig, ...]:
        return tuple(agent for agent in self.agents if agent.enabled)

    def agent(self, name: str) -> AgentConfig | None:
        for agent in self.agents:
            if agent.name == name:
                return agent
        return None

    def compile_templates(self, report: Callable[[str], None]) -> None:
        """Compile the templates left for their first use (the built-in one: the daemon
        calls this once tail-events is started). One that fails is told to `report` once,
        and is each run's error (run/spec.py)."""
        failed: set[str] = set()
        for agent in self.agents:
            template = agent.prompt
            try:
                template.compiled()
            except Exception as error:
                if template.origin not in failed:
                    failed.add(template.origin)
                    report(f"{template.origin}: {prompt.describe_error(error)}")

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
    if config.http_token:
        found.add(config.http_token)
    for target in config.notify:  # a webhook URL holds its credentials
        found.add(target.url)
        found.update(url_credentials(target.url))
    for env in (environ, *(agent.env for agent in config.agents)):
        for name, value in env.items():
            if any(word in name.upper() for word in SECRET_NAMES) and len(value) >= 8:
                found.add(value)
    return sorted(value for value in found if value)


_SECRET_QUERY = {"token", "key", "apikey", "api_key", "secret", "password", "pass", "auth"}


def url_credentials(url: str) -> set[str]:
    """The parts of an Apprise URL that are credentials: its password, and the tokens that
    services put where a host or a path segment goes (slack://T0/B0/XXXX, ntfy://TOPIC), or in
    a query value named like a secret. Not what reads as a host or an address (a dot in it):
    redacting `company.com` everywhere would hide every link and name that holds it."""
    parts = urlsplit(url)
    found = set()
    if parts.password:
        found.add(parts.password)
    host = parts.netloc.rpartition("@")[2].split(":")[0]
    candidates = [host, *parts.path.split("/")]
    for name, value in parse_qsl(parts.query):
        if name.lower() in _SECRET_QUERY:
            found.add(value)
    found.update(part for part in candidates if len(part) >= 8 and "." not in part)
    return {value for value in found if len(value) >= 8}


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
    """The enabled agents' commands (`cmd`, `resume_cmd`, `workspace_setup`,
    `workspace_teardown`) that cannot be found: `check` refuses them, a starting daemon warns
    (they may be installed later)."""
    problems = []
    for agent in config.enabled_agents:
        for key, argv in (
            ("cmd", agent.cmd),
            ("resume_cmd", agent.resume_cmd),
            ("workspace_setup", agent.workspace_setup),
            ("workspace_teardown", agent.workspace_teardown),
        ):
            problem = _find_command(argv[0], agent) if argv else None
            if problem:
                problems.append(
                    ConfigError(str(config.path), f"agents.{agent.name}.{key}", problem)
                )
    return problems


def _find_command(command: str, agent: AgentConfig) -> str | None:
    if "/" in command and agent.workspaces and not Path(command).expanduser().is_absolute():
        return None  # relative to each conversation's own workdir, made at its first run
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
    import difflib  # only for a misspelt key: not on every start

    match = difflib.get_close_matches(name, sorted(allowed), n=1)
    return f" (did you mean {match[0]!r}?)" if match else f" (known: {', '.join(sorted(allowed))})"
