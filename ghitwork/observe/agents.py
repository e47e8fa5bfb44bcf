"""One agent and its conversations, as the dashboard model keeps them (observe/dashboard.py
folds changes into these; `AgentView` and `ConversationView` show them).

Conversations (SPEC §12): per agent, its conversations, each with its own state, queue, batch,
attempt, session, usage and last run; the agent's row sums them up: its state is the most
pressing of theirs (PRESSING), its queue their sum, its batch the working ones' events. An
idle conversation with nothing queued is forgotten once more than MAX_IDLE of the agent's are
(the least recently active first), and one that has no session either once it has been idle
for IDLE_KEPT (SPEC §12: "idle conversations with nothing queued may be left out after a
while"): a thread's last run stays listed for a while, then the conversation costs nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import msgspec

from ghitwork.bus.changes import (
    BATCH_SHOWN,
    AgentPaused,
    AgentState,
    QuotaChanged,
)
from ghitwork.config.model import AgentConfig
from ghitwork.model.conversations import OWN
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.formatting import pause_text
from ghitwork.model.formatting import quota_text as describe_quota
from ghitwork.model.results import RunResult
from ghitwork.model.usage import NO_USAGE, Usage
from ghitwork.observe.view import AgentView, ConversationView

MAX_RUNS = 20
MAX_IDLE = 50  # idle conversations with nothing queued kept per agent (the most recent)
IDLE_KEPT = 60.0  # seconds one of them with no session stays listed once idle

# The agent's state is the most pressing of its conversations' (lowest first; a state this
# table does not know ranks with idle).
PRESSING = {
    AgentState.WORKING: 0,
    AgentState.QUEUED: 1,
    AgentState.NEEDS_INPUT: 2,  # SPEC §13: a human is asked
    AgentState.QUOTA: 3,  # SPEC §14: its account's usage limit
    AgentState.RATE_LIMITED: 4,
    AgentState.RETRYING: 5,
    AgentState.THROTTLED: 6,
    AgentState.PAUSED: 7,
    AgentState.IDLE: 8,
    AgentState.DISABLED: 9,
}


def _rank(state: AgentState) -> int:
    return PRESSING.get(state, PRESSING[AgentState.IDLE])


_QUIET = (AgentState.IDLE, AgentState.DISABLED)


class _Conversation(msgspec.Struct):
    """One conversation of an agent, as the model keeps it (`ConversationView` shows it)."""

    key: str
    state: AgentState
    since: float
    queue: int = 0
    batch: tuple[tuple[int, str, str], ...] = ()
    batch_ids: tuple[int, ...] = ()
    session_id: str | None = None
    attempt: int = 1
    due: float | None = None
    problem: str = ""
    usage: Usage = NO_USAGE
    last_run: RunResult | None = None
    workspace: str = ""
    active: float = 0.0
    shown: ConversationView | None = None  # its view, until it changes
    counted: AgentState | None = None  # the state it is counted in (_Agent.states)

    def view(self) -> ConversationView:
        if self.shown is None:
            self.shown = ConversationView(
                self.key,
                self.state,
                self.since,
                self.queue,
                self.batch,
                self.batch_ids,
                self.session_id,
                self.attempt,
                self.due,
                self.problem,
                self.usage,
                self.last_run,
                self.workspace,
                self.active,
            )
        return self.shown


class _Agent(msgspec.Struct):
    """One agent as the model keeps it: what is its own (config, runs, dead letters, usage),
    its conversations, and its state as they sum it up (`AgentView` shows it)."""

    name: str
    state: AgentState
    since: float
    config: AgentConfig | None = None
    runs: deque[RunResult] = msgspec.field(default_factory=lambda: deque(maxlen=MAX_RUNS))
    dead_letters: tuple[DeadLetter, ...] = ()
    usage_total: Usage = NO_USAGE
    usage_today: Usage = NO_USAGE
    today: str = ""
    # Its conversations, the most recently active last.
    conversations: dict[str, _Conversation] = msgspec.field(default_factory=dict)
    # All-time usage per conversation (the ledger's, from UsageLoaded, then each charge).
    usage: dict[str, Usage] = msgspec.field(default_factory=dict)
    # Events queued whose conversation is not known yet (saved ones queued again at start,
    # counted per agent), until a change of one of its conversations tells its queue.
    unplaced: int = 0
    shown: AgentView | None = None  # its view, until it changes
    # How many of its conversations are in each state, and which are quiet (idle, nothing
    # queued; the agent's own aside), the least recently active first: kept as they change
    # (`changed`), so that summing up and forgetting cost the same however many it has.
    states: dict[AgentState, int] = msgspec.field(default_factory=dict)
    quiet: dict[str, None] = msgspec.field(default_factory=dict)
    paused: AgentPaused | None = None  # SPEC §13: its pause, while it lasts
    quota: QuotaChanged | None = None  # SPEC §14: its account's closed window, while it lasts
    days: dict[str, Usage] = msgspec.field(default_factory=dict)  # usage per day, the last DAYS

    @property
    def threads(self) -> bool:
        return self.config is not None and self.config.threads

    @property
    def resting(self) -> AgentState:
        """The state of a conversation that has nothing going on."""
        config = self.config
        return AgentState.DISABLED if config is not None and not config.enabled else AgentState.IDLE

    def conversation(self, key: str, at: float, state: AgentState | None = None) -> _Conversation:
        """`key` (made, in `state` since `at`, when new), now the most recently active; call
        `changed` once it is changed."""
        self.shown = None
        conversations = self.conversations
        found = conversations.pop(key, None)
        if found is None:
            usage = self.usage.get(key, NO_USAGE)
            found = _Conversation(key, state or self.resting, at, usage=usage)
            conversations[key] = found
            self.states[found.state] = self.states.get(found.state, 0) + 1
            found.counted = found.state
        else:
            conversations[key] = found
            found.shown = None
        return found

    def grew(self, key: str, count: int, at: float) -> None:
        """`count` events were queued in `key` (made when new) at `at`: its queue grows and
        it is now the most recently active. What `conversation` and `changed` do, for the
        one change a routed event makes (its state is the same, it is not quiet any more):
        a catch-up in thread mode does this for every conversation of every read."""
        conversations = self.conversations
        found = conversations.pop(key, None)
        if found is None:
            found = _Conversation(key, self.resting, at, usage=self.usage.get(key, NO_USAGE))
            self.states[found.state] = self.states.get(found.state, 0) + 1
            found.counted = found.state
        else:
            found.shown = None
        conversations[key] = found
        found.queue += count
        found.active = at
        if found.queue and found.counted is found.state:
            self.quiet.pop(key, None)
        else:  # nothing queued after all, or a state not counted yet: as `changed` says
            self.changed(found)

    def recall(self, keys: Sequence[str], at: float) -> None:
        """Threads it worked on before the restart (`keys`, the most recently used last, as
        state_dir keeps them: their usage, their sessions), those it does not show yet: in
        thread mode, at most MAX_IDLE, the most recently used, idle and less recently active
        than any it has now."""
        if not self.threads:
            return
        for key in reversed(keys[-MAX_IDLE:]):
            if key in self.conversations or len(self.quiet) >= MAX_IDLE:
                continue
            found = _Conversation(key, self.resting, at, usage=self.usage.get(key, NO_USAGE))
            self.conversations = {key: found, **self.conversations}
            self.states[found.state] = self.states.get(found.state, 0) + 1
            found.counted = found.state
            if key != OWN and found.state in _QUIET:
                self.quiet = {key: None, **self.quiet}
            self.shown = None

    def changed(self, found: _Conversation) -> None:
        """`found` changed: the counts of states, and the quiet ones (the least recently
        active are forgotten beyond MAX_IDLE)."""
        found.shown, self.shown = None, None
        states = self.states
        if found.counted is not found.state:
            if found.counted is not None:
                states[found.counted] -= 1
            states[found.state] = states.get(found.state, 0) + 1
            found.counted = found.state
        key, quiet = found.key, self.quiet
        quiet.pop(key, None)
        if key != OWN and found.state in _QUIET and not found.queue:
            quiet[key] = None
            if len(quiet) > MAX_IDLE:  # forget the least recently active
                self._forget(next(iter(quiet)))

    def forget_idle(self, now: float) -> bool:
        """The quiet conversations with no session, idle since IDLE_KEPT before `now`, are
        forgotten (those with a session stay, within MAX_IDLE: its id is worth showing).
        Whether one was. The quiet are in the order they went quiet, so the walk stops at the
        first one idle for less than that."""
        conversations, cutoff = self.conversations, now - IDLE_KEPT
        gone = []
        for key in self.quiet:
            found = conversations[key]
            if found.since > cutoff:
                break
            if found.session_id is None:
                gone.append(key)
        for key in gone:
            self._forget(key)
        if gone:
            self.settle(now)  # one conversation left: the agent is it, since when it was
            self.shown = None
        return bool(gone)

    def _forget(self, key: str) -> None:
        del self.quiet[key]
        gone = self.conversations.pop(key)
        if gone.counted is not None:
            self.states[gone.counted] -= 1

    def settle(self, at: float) -> None:
        """Its state, from its conversations': the most pressing (disabled when the agent is,
        unless a run still works); with one conversation, that one's, and since when."""
        conversations = self.conversations
        paused = self.paused
        disabled = self.config is not None and not self.config.enabled
        if len(conversations) == 1:  # the agent's own, or one thread: the agent is it
            (one,) = conversations.values()
            self.state, self.since = one.state, one.since
        elif conversations:
            states = self.states
            state = min((s for s, n in states.items() if n), key=_rank, default=self.state)
            if disabled and state is not AgentState.WORKING:
                state = AgentState.DISABLED
            if state is not self.state:
                self.state, self.since = state, at
        if paused is not None and not disabled and self.state is not AgentState.PAUSED:
            # paused on every surface at once (SPEC §13), since it was, also while a run of
            # it finishes (its batch still shown); a disabled agent says disabled (or
            # working, while its run finishes), as without a pause
            self.state, self.since = AgentState.PAUSED, paused.since or paused.at
        quota = self.quota
        quiet = (AgentState.WORKING, AgentState.DISABLED, AgentState.PAUSED, AgentState.QUOTA)
        if quota is not None and self.state not in quiet:
            self.state, self.since = AgentState.QUOTA, quota.at

    def view(self) -> AgentView:
        """Its view (made again only when something changed): its conversations, the most
        pressing first, then the most recently active; its own figures summed up from theirs."""
        if self.shown is not None:
            return self.shown
        conversations = self.conversations
        ordered = sorted(reversed(conversations.values()), key=lambda c: _rank(c.state))
        queue = self.unplaced + sum(c.queue for c in ordered)
        batch: tuple[tuple[int, str, str], ...] = ()
        batch_ids: tuple[int, ...] = ()
        session, attempt, due, problem = None, 1, None, ""
        if len(ordered) == 1:
            (one,) = ordered
            batch, batch_ids = one.batch, one.batch_ids
            session, attempt, due, problem = one.session_id, one.attempt, one.due, one.problem
        else:
            working = [c for c in ordered if c.state is AgentState.WORKING]
            if working:
                batch = tuple(sorted(b for c in working for b in c.batch)[:BATCH_SHOWN])
                batch_ids = tuple(sorted(i for c in working for i in c.batch_ids))
        if self.paused is not None and self.state is AgentState.PAUSED:
            pause = self.paused
            problem, due = pause_text(pause.until, pause.by, pause.reason), pause.until
        elif self.quota is not None and self.state is AgentState.QUOTA and self.quota.until:
            quota = self.quota
            own = quota.account == self.name and (not self.config or not self.config.account)
            problem = describe_quota(quota.account, quota.until or 0.0, own)
            due = quota.until
        elif ordered and len(ordered) > 1:
            lead = ordered[0]  # the most pressing, the most recently active of those
            dues = [c.due for c in ordered if c.state is lead.state and c.due is not None]
            session, attempt, problem = lead.session_id, lead.attempt, lead.problem
            due = min(dues) if dues else None
        self.shown = AgentView(
            self.name,
            self.state,
            self.since,
            queue=queue,
            batch=batch,
            batch_ids=batch_ids,
            session_id=session,
            runs=tuple(self.runs),
            problem=problem,
            config=self.config,
            usage_total=self.usage_total,
            usage_today=self.usage_today,
            today=self.today,
            attempt=attempt,
            due=due,
            dead_letters=self.dead_letters,
            conversations=tuple(c.view() for c in ordered),
            days=tuple(sorted(self.days.items())),
        )
        return self.shown
