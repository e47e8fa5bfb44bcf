"""What the TUI shows, reduced from the state bus; no asciimatics here.

`DashboardModel` subscribes to the state bus and folds every change into a small model;
`view()` hands the screen an immutable `View`, rebuilt only when something changed, so the
screen draws the latest snapshot (never a queue of frames) and an idle dashboard costs
nothing. The model and the screen run on the one asyncio thread.

Every figure is current (SPEC §11): an agent's queue grows the moment an event is queued for
it (routed from the stream, or a dead letter handed back), not at its next state change; the
changes that carry `queue` (AgentChanged, RunStarted, RunFinished) then set it exactly.

Everything a view shows is redacted by the shared Redactor (redact.py), as it is at the time
of the view: a secret added at a reload is redacted in what was kept from before it too.

Conversations (SPEC §12): the model keeps, per agent, its conversations, each with its own
state, queue, batch, attempt, session, usage and last run (a `ConversationView` in a view),
and the agent's row sums them up: its state is the most pressing of theirs (working >
queued > needs-input > rate-limited > retrying > throttled > paused > idle; disabled when the
agent is, unless a run still works), its queue their sum, its batch the working ones'
events. With `conversations = "agent"` the one conversation `""` is the agent, field for
field. An idle conversation with nothing queued is forgotten once more than MAX_IDLE of the
agent's are (the least recently active first), and one with no session once idle for
IDLE_KEPT (`sweep`, at the daemon's tick), so a thousand threads over a day leave at most
that many behind, those with a session.

A change sets a few attributes; an agent's `AgentView` (and its conversations') is made when
a view is asked for, and only for what changed since: a catch-up's thousands of changes do
not build thousands of frozen views nobody reads.

Here: `DashboardModel`, its reducers (one per Change type); what it keeps and hands out is
observe/dashstate.py's, an agent and its conversations observe/agents.py's.
"""

from __future__ import annotations

import functools

from ghitwork.bus.changes import (
    AgentChanged,
    AgentPaused,
    AgentState,
    Change,
    ConfigApplied,
    ConversationsQueued,
    DeadLettersLoaded,
    DeadLettersRedelivered,
    EventSkipped,
    EventsRestored,
    EventsRouted,
    Level,
    Notice,
    QuotaChanged,
    RunFinished,
    RunStarted,
    SessionsLoaded,
    SourceExited,
    SourceRetry,
    SourceStarted,
    StopRequested,
    UsageLoaded,
    WorkspaceChanged,
)
from ghitwork.model.conversations import OWN
from ghitwork.model.usage import MAX_CONVERSATIONS, NO_USAGE, Usage, day_of
from ghitwork.observe.agents import MAX_IDLE as MAX_IDLE
from ghitwork.observe.agents import _Agent
from ghitwork.observe.dashstate import _DashboardState
from ghitwork.observe.lines import LEVELS, lines_of, only_info, routed_line
from ghitwork.observe.view import DAYS, _hms, kind_and_title
from ghitwork.observe.view import AgentView as AgentView
from ghitwork.observe.view import ConversationView as ConversationView
from ghitwork.observe.view import EventLine as EventLine
from ghitwork.observe.view import View as View
from ghitwork.observe.view import batch_text as batch_text

# states whose change's reason is shown as the conversation's problem until it moves on
SAYS_WHY = (AgentState.NEEDS_INPUT, AgentState.THROTTLED)


class DashboardModel(_DashboardState):
    # -- input
    def __call__(self, change: Change) -> None:
        self.version += 1
        if not self._apply(change):
            return  # the per-event path stays short: no log line unless debugging
        if self.threshold > LEVELS[Level.INFO] and only_info(change):
            return
        for line in lines_of(change):
            if LEVELS[line.level] < self.threshold:
                continue
            text = self._redact(f"{_hms(change.at)} {line.message}")
            self.log.append(text)
            if LEVELS[line.level] >= LEVELS[Level.WARNING] or isinstance(change, EventSkipped):
                self.attention.append(text)

    # -- one handler per Change type: what it changes in the model; False: no log line
    @functools.singledispatchmethod
    def _reduce(self, change: Change) -> bool:
        return True

    @_reduce.register
    def _routed(self, change: EventsRouted) -> bool:
        self._events(change)
        return False

    @_reduce.register
    def _saved(self, change: EventsRestored) -> bool:
        """Saved events queued again at start: in the agent's own conversation, or (one per
        thread) counted for the agent until its conversations tell their queues."""
        for name, count in change.counts.items():
            current = self._agent(name)
            if current.threads:
                current.unplaced += count
                current.shown = None
            else:
                self._queued([(name, [(OWN, count)])])
        return False

    @_reduce.register
    def _applied(self, change: ConfigApplied) -> bool:
        self._configure(change.config, change.at)
        return True

    @_reduce.register
    def _changed(self, change: AgentChanged) -> bool:
        found = self._conversation(change.agent, change.conversation, change.at)
        found.state, found.since, found.queue = change.new, change.at, change.queue
        found.problem = ""  # the last run's failure shows until it moves on
        found.due = change.due  # throttled, quota: when it may run again
        if change.new in SAYS_WHY and change.reason:
            found.problem = change.reason  # its question (SPEC §13); which budget (SPEC §9)
        self._settle(change.agent, found, change.at)
        return True

    @_reduce.register
    def _queued_now(self, change: ConversationsQueued) -> bool:
        """What an AgentChanged to `queued` does, for each conversation a burst queued."""
        at = change.at
        current = self._agent(change.agent)
        if current.threads:
            current.unplaced = 0  # its conversations tell their queues from now on
        conversations, routed_at = current.conversations, self._routed_at
        for key, _, queue in change.queued:
            found = conversations.get(key)
            if found is None or found.active != routed_at:
                found = current.conversation(key, at)  # made, or now the most recently active
            # else: the read that queued it just made it the most recently active
            found.active = found.since = at
            found.state, found.queue, found.problem, found.due = AgentState.QUEUED, queue, "", None
            current.changed(found)
        current.settle(at)
        return True

    @_reduce.register
    def _started(self, change: RunStarted) -> bool:
        found = self._conversation(change.agent, change.conversation, change.at)
        found.state, found.since, found.queue = AgentState.WORKING, change.at, change.queue
        found.batch = tuple((e.id, *kind_and_title(e)) for e in change.shown)
        found.batch_ids = change.event_ids
        found.session_id, found.attempt, found.due = change.session_id, change.attempt, None
        self._settle(change.agent, found, change.at)
        return True

    @_reduce.register
    def _ended(self, change: RunFinished) -> bool:
        self._finished(change)
        return True

    @_reduce.register
    def _workspace(self, change: WorkspaceChanged) -> bool:
        current = self.agents.get(change.agent)
        found = current.conversations.get(change.conversation) if current else None
        path = change.path if change.ready else ""
        if found is None:
            if change.ready and change.used is None:  # made for a run about to start
                found = self._conversation(change.agent, change.conversation, change.at)
                found.workspace = path
                self.agents[change.agent].changed(found)
            return True  # a forgotten one (idle) has nothing to show
        if current is not None and found.workspace != path:
            found.workspace, found.shown, current.shown = path, None, None
        return True

    @_reduce.register
    def _letters_loaded(self, change: DeadLettersLoaded) -> bool:
        self._dead_letters(change)
        return True

    @_reduce.register
    def _letters_back(self, change: DeadLettersRedelivered) -> bool:
        self._dead_letters(change)
        threads = self._threads
        added: dict[tuple[str, str], int] = {}
        for letter in change.letters:
            key = (letter.agent, letter.conversation if letter.agent in threads else OWN)
            added[key] = added.get(key, 0) + len(letter.events)
        self._queued((name, [(key, count)]) for (name, key), count in added.items())
        return True

    @_reduce.register
    def _usage(self, change: UsageLoaded) -> bool:
        day = day_of(self.clock())
        for name, total in change.totals.items():
            current = self._agent(name)
            current.usage_total = total
            current.usage_today = change.days.get(name, {}).get(day, Usage())
            current.today = day
            kept = change.days.get(name, {})
            current.days = {d: kept[d] for d in sorted(kept)[-DAYS:]}
        for name, kept in change.conversations.items():
            current = self._agent(name)
            current.usage = dict(kept)  # the most recently used last, as the ledger keeps it
            for key, found in current.conversations.items():
                found.usage, found.shown = kept.get(key, NO_USAGE), None
            current.recall(list(kept), change.at)  # the threads it worked on: what they cost
            current.settle(change.at)
        return True

    @_reduce.register
    def _sessions(self, change: SessionsLoaded) -> bool:
        """The sessions kept from before the restart, each its conversation's until a run of
        it says otherwise (in thread mode, at most MAX_IDLE of those not shown yet, the most
        recently used)."""
        for name, kept in change.sessions.items():
            current = self._agent(name)
            current.recall(list(kept), change.at)
            for key, found in current.conversations.items():
                if key in kept:
                    found.session_id, found.shown = kept[key], None
            current.shown = None
            current.settle(change.at)
        return False

    @_reduce.register
    def _paused(self, change: AgentPaused) -> bool:
        current = self._agent(change.agent)
        current.paused = change if change.paused else None
        current.shown = None
        if not change.paused and current.state is AgentState.PAUSED:
            current.state = current.resting  # its conversations say more, if anything
        current.settle(change.at)
        return True

    @_reduce.register
    def _quota(self, change: QuotaChanged) -> bool:
        if change.until is None:
            self.quotas.pop(change.account, None)
        else:
            self.quotas[change.account] = change.until
        for name in change.agents:
            current = self._agent(name)
            current.quota = change if change.until is not None else None
            current.shown = None
            if change.until is None and current.state is AgentState.QUOTA:
                current.state = current.resting  # its conversations say more, if anything
            current.settle(change.at)
        return True

    @_reduce.register
    def _stopping(self, change: StopRequested) -> bool:
        self.health, self.retry_at = "stopping", None
        return True

    # What the stream does while stopping changes nothing.
    @_reduce.register
    def _source_started(self, change: SourceStarted) -> bool:
        if self.health != "stopping":
            self.health, self.retry_at = "healthy", None
        return True

    @_reduce.register
    def _source_retry(self, change: SourceRetry) -> bool:
        if self.health != "stopping":
            self.health = "retrying"
            self.retry_at = change.at + change.delay
            self.retry_used = change.used
        return True

    @_reduce.register
    def _source_exited(self, change: SourceExited) -> bool:
        if self.health == "healthy" and not change.expected:
            self.health = "retrying"
        return True

    @_reduce.register
    def _notice(self, change: Notice) -> bool:
        failing = change.topic == "tail-events" and change.level is Level.ERROR
        if failing and self.health != "stopping":
            self.health, self.retry_at = "failing", None
        return True

    def _events(self, change: EventsRouted) -> None:
        routes = change.routes
        self.events_seen += len(routes)
        self.events.extend(routes)
        # per conversation, not per event: the pipeline split the read already
        self._queued(
            (name, [(key, len(events)) for key, events in parts])
            for name, parts in change.deliveries
        )
        if self.threshold <= LEVELS[Level.DEBUG]:
            for event, agents in routes:
                self.log.append(
                    self._redact(f"{_hms(change.at)} {routed_line(event, agents).message}")
                )

    def _finished(self, change: RunFinished) -> None:
        result = change.result
        self.batches_run += 1
        if not result.ok and not result.stopped:
            self.failures += 1
        current = self.agents.get(change.agent)
        if current is None:
            current = self.agents[change.agent] = _Agent(change.agent, change.new, change.at)
        current.runs.append(result)
        if change.dead_letter is not None:
            current.dead_letters = (*current.dead_letters, change.dead_letter)
        found = self._conversation(change.agent, change.conversation, change.at)
        if result.charge is not None:
            charged = result.charge.usage
            if result.charge.day != current.today:
                current.usage_today, current.today = Usage(), result.charge.day
            current.usage_total += charged
            current.usage_today += charged
            found.usage += charged
            days = current.days
            days[result.charge.day] = days.get(result.charge.day, NO_USAGE) + charged
            while len(days) > DAYS:
                del days[min(days)]
            kept = current.usage
            kept.pop(found.key, None)
            kept[found.key] = found.usage  # the most recently used last, as the ledger's
            while len(kept) > MAX_CONVERSATIONS:
                del kept[next(iter(kept))]
        found.state, found.since, found.queue = change.new, change.at, change.queue
        found.batch, found.batch_ids = (), ()
        found.problem = "" if result.ok or result.stopped else result.describe()
        found.session_id = result.session_id or found.session_id
        found.attempt = change.retry.attempt if change.retry else 1
        found.due, found.last_run = change.retry_at, result
        self._settle(change.agent, found, change.at)
