"""What every view shows (the TUI, `status`, the API, the page, the metrics): immutable
snapshots that observe/dashboard.py's model hands out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec
from msgspec.structs import replace

from ghitwork.bus.changes import AgentState
from ghitwork.config.model import AgentConfig
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.events import Event
from ghitwork.model.formatting import id_ranges
from ghitwork.model.results import RunResult
from ghitwork.model.usage import NO_USAGE, Usage


class EventLine(msgspec.Struct, frozen=True):
    id: int
    kind: str
    actor: str
    scopes: tuple[str, ...]
    title: str
    agents: tuple[str, ...]

    def matches(self, needle: str) -> bool:
        needle = needle.lower()
        return any(
            needle in text.lower() for text in (self.kind, self.actor, self.title, *self.scopes)
        )


class ConversationView(msgspec.Struct, frozen=True):
    """One conversation of an agent (SPEC §12): `""` is the agent's own (the only one with
    `conversations = "agent"`), else a `thread:` scope. Its own state machine, queue,
    batch, attempt, session and usage; the agent's row (`AgentView`) sums them up."""

    conversation: str
    state: AgentState
    since: float  # when it entered its state
    queue: int = 0
    batch: tuple[tuple[int, str, str], ...] = ()  # (id, kind, title), the first BATCH_SHOWN
    batch_ids: tuple[int, ...] = ()
    session_id: str | None = None
    attempt: int = 1
    due: float | None = None  # when it runs again, retrying or rate-limited
    problem: str = ""  # why its last run failed, until it moves on
    usage: Usage = NO_USAGE  # all time (kept in state_dir)
    last_run: RunResult | None = None
    workspace: str = ""  # its own workdir, while it exists (workspaces, SPEC §12)
    active: float = 0.0  # when something last happened to it

    @property
    def shown_state(self) -> str:
        """An idle conversation whose last run failed is shown as failing."""
        if self.state is AgentState.IDLE and self.problem:
            return "failing"
        return str(self.state)

    @property
    def name(self) -> str:
        """How views name it: the `thread:` scope, or `(no thread)` for the agent's own."""
        return self.conversation or OWN_NAME


OWN_NAME = "(no thread)"  # how views name the agent's own conversation ("")
DAYS = 14  # calendar days of usage a view carries per agent (today included)


class AgentView(msgspec.Struct, frozen=True):
    name: str
    state: AgentState
    since: float
    queue: int = 0
    batch: tuple[tuple[int, str, str], ...] = ()  # (id, kind, title), the first BATCH_SHOWN
    batch_ids: tuple[int, ...] = ()  # the whole batch
    session_id: str | None = None
    runs: tuple[RunResult, ...] = ()
    problem: str = ""
    config: AgentConfig | None = None
    usage_total: Usage = NO_USAGE
    usage_today: Usage = NO_USAGE
    today: str = ""  # the day usage_today is of
    attempt: int = 1  # of the current run, or of the next one while retrying
    due: float | None = None  # when a retrying or rate-limited agent runs again
    dead_letters: tuple[DeadLetter, ...] = ()
    # Its conversations (SPEC §12), the most active first: working, queued, rate-limited,
    # retrying, throttled, then idle ones, the most recently active first. With
    # `conversations = "agent"`, the one `""`; the fields above sum them up.
    conversations: tuple[ConversationView, ...] = ()
    # Its usage per calendar day (the instance's time zone), of the last DAYS days that
    # had any, oldest first: (day as YYYY-MM-DD, usage). The page's cost chart.
    days: tuple[tuple[str, Usage], ...] = ()

    @property
    def threads(self) -> bool:
        """It has conversations of its own threads to list (more than the agent's own)."""
        return any(c.conversation for c in self.conversations)

    @property
    def working(self) -> bool:
        """A run of it works (its state may say paused: a paused agent's run finishes)."""
        return self.state is AgentState.WORKING or any(
            c.state is AgentState.WORKING for c in self.conversations
        )

    @property
    def shown_state(self) -> str:
        """The strip's word: an idle agent whose last run failed is shown as failing."""
        if self.state is AgentState.IDLE and self.problem:
            return "failing"
        return str(self.state)


class View(msgspec.Struct, frozen=True):
    config_path: str = ""
    limit: int = 0
    retry: float = 0.0
    health: str = "starting"
    retry_at: float | None = None  # when the next tail-events start is due (retrying)
    retry_used: float = 0.0
    events_seen: int = 0
    batches_run: int = 0
    failures: int = 0
    cost_today: float = 0.0  # the fleet's
    agents: tuple[AgentView, ...] = ()
    events: tuple[EventLine, ...] = ()
    attention: tuple[str, ...] = ()
    log: tuple[str, ...] = ()


def _hms(moment: float) -> str:
    return datetime.fromtimestamp(moment).strftime("%H:%M:%S")


def batch_text(view: AgentView) -> str:
    return id_ranges(view.batch_ids)


def redacted_view(view: AgentView, text: Callable[[str], str]) -> AgentView:
    """`view` with every text it shows redacted by `text` (the one redactor)."""
    config = view.config
    if config is not None:  # a secret written into a command line is shown as *** too
        config = replace(
            config,
            cmd=tuple(text(part) for part in config.cmd),
            resume_cmd=tuple(text(p) for p in config.resume_cmd) if config.resume_cmd else None,
        )
    return replace(
        view,
        config=config,
        session_id=text(view.session_id) if view.session_id else view.session_id,
        problem=text(view.problem),
        batch=tuple((ident, kind, text(title)) for ident, kind, title in view.batch),
        runs=tuple(_redacted_run(run, text) for run in view.runs),
        dead_letters=tuple(
            replace(letter, error=text(letter.error)) for letter in view.dead_letters
        ),
        conversations=tuple(_redacted_conversation(c, text) for c in view.conversations),
    )


def _redacted_conversation(
    conversation: ConversationView, text: Callable[[str], str]
) -> ConversationView:
    """A conversation with what it says redacted (the same object when nothing is)."""
    changed: dict[str, object] = {}
    session, problem, last = conversation.session_id, conversation.problem, conversation.last_run
    if session and text(session) != session:
        changed["session_id"] = text(session)
    if problem and text(problem) != problem:
        changed["problem"] = text(problem)
    batch = tuple((ident, kind, text(title)) for ident, kind, title in conversation.batch)
    if batch != conversation.batch:
        changed["batch"] = batch
    if last is not None and (shown := _redacted_run(last, text)) is not last:
        changed["last_run"] = shown
    return replace(conversation, **changed) if changed else conversation


def _redacted_run(run: RunResult, text: Callable[[str], str]) -> RunResult:
    """A run's result with what it says redacted (the same object when nothing is)."""
    fields = {
        "session_id": run.session_id,
        "error": run.error,
        "fault": run.fault,
        "last_stderr": run.last_stderr,
        "question": run.question,  # needs-input: what the agent printed it asks
    }
    changed = {key: text(value) for key, value in fields.items() if value}
    changed = {key: value for key, value in changed.items() if value != fields[key]}
    return replace(run, **changed) if changed else run


def kind_and_title(event: Event | None) -> tuple[str, str]:
    if event is None:
        return "", ""
    summary = event.data.get("summary")
    title = summary.get("thread_title", "") if isinstance(summary, dict) else ""
    return event.kind, title if isinstance(title, str) else ""
