"""What deserves a notification (SPEC §13): the state bus's changes read as causes.

A pure state machine, no I/O: `Causes.on(change)` answers the notifications a change makes,
`tick(now)` those a moment makes (the stream's), `due()` when the next tick is wanted. What it
must remember across a restart, so that one cause notifies once (an agent still throttled, a
conversation still waiting for input, a failing stream already reported), is `state()`, which
the outbox keeps and `load` gives back.

The causes:

- `dead-letter`: a `RunFinished` carrying a dead letter; once per letter id. Of the letters
  kept in state_dir and shown again at start (`DeadLettersLoaded`), only those numbered past
  the last one notified (`dead_letters`: made just before a crash, by a run the notifier
  never saw end) are news; when none was ever notified, none are.
- `needs-input`: a run that ended in `needs-input`, or a conversation changed to it; once
  until the conversation runs again.
- `throttled`: an agent entering that state; once until it runs again or leaves it.
- `quota`: an account's usage limit reached (`QuotaChanged`): once per window, for the whole
  account (not once per agent of it), never for a window restored at start.
- `stream-failing`: tail-events has been failing for FAILING_AFTER (a restart that works at
  once is no news), or ghit-work gave up on it, or cannot start it at all; once per episode,
  even across a restart. `stream-healthy`: the stream read events again, or stayed up for
  HEALTHY_AFTER, after a `stream-failing` was sent.
- `paused`: an agent paused; a pause restored at start has the same key (its start time),
  so it is news only if it never was (kept from before notifications were configured).
- `internal-error`: the fatal line (a `Notice` of topic `fatal`) and the `internal` topic's
  errors (what no one awaited, a callback's exception).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ghitwork.bus.changes import (
    AgentChanged,
    AgentPaused,
    AgentState,
    Change,
    ConversationsQueued,
    DeadLettersLoaded,
    EventsRouted,
    Level,
    Notice,
    QuotaChanged,
    RunFinished,
    RunStarted,
    SourceExited,
    SourceRetry,
    SourceStarted,
)
from ghitwork.model.durations import format_duration
from ghitwork.model.events import Event
from ghitwork.notify import compose as say
from ghitwork.notify.compose import Notification, dead_letter
from ghitwork.source.tail import HEALTHY_AFTER

FAILING_AFTER = 30.0  # seconds tail-events must have been failing before it is news


class Causes:
    """The state bus's changes read as notifications (see the module's docstring)."""

    def __init__(
        self, failing_after: float = FAILING_AFTER, healthy_after: float = HEALTHY_AFTER
    ) -> None:
        self.failing_after = failing_after
        self.healthy_after = healthy_after
        # Durable (state()): who is notified as throttled, over quota, waiting for input
        # (agent, or "agent\nconversation"), and since when the stream's failure was sent.
        self.throttled: dict[str, str] = {}
        self.quota: dict[str, str] = {}
        self.parked: dict[str, str] = {}
        self.stream_failing: float | None = None  # the episode notified began then
        # The highest dead letter id seen: kept by the outbox's keys (`dead-letter:N`), so
        # the notifier gives it back at start (`Outbox.highest`); not part of state().
        self.dead_letters: int | None = None
        self.dirty = False  # state() changed since it was last taken
        # In memory: the stream's episode, and each conversation's batch shown at its start
        self._failing_since: float | None = None
        self._failure = ""
        self._up_since: float | None = None
        self._shown: dict[tuple[str, str], tuple[Event, ...]] = {}
        self._ids: dict[tuple[str, str], tuple[int, ...]] = {}

    # -- durable state
    def state(self) -> dict[str, Any]:
        self.dirty = False
        return {
            "throttled": dict(self.throttled),
            "quota": dict(self.quota),
            "parked": dict(self.parked),
            "stream_failing": self.stream_failing,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        def strings(value: object) -> dict[str, str]:
            if not isinstance(value, Mapping):
                return {}
            return {str(k): str(v) for k, v in value.items()}

        self.throttled = strings(state.get("throttled"))
        self.quota = strings(state.get("quota"))
        self.parked = strings(state.get("parked"))
        since = state.get("stream_failing")
        self.stream_failing = float(since) if isinstance(since, int | float) else None
        self.dirty = False

    # -- changes
    def on(self, change: Change) -> list[Notification]:
        handler = _HANDLERS.get(type(change))
        return handler(self, change) if handler is not None else []

    def _run_started(self, change: RunStarted) -> list[Notification]:
        conversation = (change.agent, change.conversation)
        self._shown[conversation] = change.shown
        self._ids[conversation] = change.event_ids
        # Running again: a later throttle or question is news again.
        self._forget(self.throttled, change.agent)
        self._forget(self.parked, _conversation_key(*conversation))
        return []

    def _run_finished(self, change: RunFinished) -> list[Notification]:
        conversation = (change.agent, change.conversation)
        shown = self._shown.pop(conversation, ())
        ids = self._ids.pop(conversation, ()) or change.result.event_ids
        found: list[Notification] = []
        if change.dead_letter is not None:
            found.append(dead_letter(change.dead_letter, change.at, change.result.last_stderr))
            self._seen_letter(change.dead_letter.id)
        asks = change.result.needs_input
        if change.new == AgentState.NEEDS_INPUT or asks:
            question = change.result.question
            found += self._needs_input(
                change.agent, change.conversation, change.at, question, ids, shown, ran=True
            )
        found += self._entering(change.agent, change.conversation, str(change.new), "", change.at)
        return found

    def _dead_letters_loaded(self, change: DeadLettersLoaded) -> list[Notification]:
        ids = [letter.id for letter in change.letters]
        if self.dead_letters is None:  # the first start that notifies: the past is no news
            self._seen_letter(max(ids, default=0))
            return []
        found = [
            dead_letter(letter, change.at)
            for letter in change.letters
            if letter.id > self.dead_letters
        ]
        self._seen_letter(max(ids, default=0))
        return found

    def _seen_letter(self, ident: int) -> None:
        if self.dead_letters is None or ident > self.dead_letters:
            self.dead_letters = ident

    def _queued(self, change: ConversationsQueued) -> list[Notification]:
        """Being queued is no news; leaving needs-input (or throttled) is forgotten."""
        leaving = (AgentState.NEEDS_INPUT, AgentState.THROTTLED)
        return [found for each in change.each(leaving) for found in self._agent_changed(each)]

    def _agent_changed(self, change: AgentChanged) -> list[Notification]:
        new, old = str(change.new), str(change.old)
        if old != new:
            if old == AgentState.THROTTLED:
                self._forget(self.throttled, change.agent)
            elif old == AgentState.NEEDS_INPUT:
                self._forget(self.parked, _conversation_key(change.agent, change.conversation))
        found = self._entering(
            change.agent, change.conversation, new, change.reason, change.at, change.waiting
        )
        if new == AgentState.NEEDS_INPUT and old != new:
            conversation = (change.agent, change.conversation)
            found += self._needs_input(
                change.agent,
                change.conversation,
                change.at,
                change.reason or None,
                self._ids.get(conversation, ()),
                self._shown.get(conversation, ()),
                ran=False,
            )
        return found

    def _entering(
        self,
        agent: str,
        conversation: str,
        state: str,
        reason: str,
        at: float,
        waiting: Sequence[Event] = (),
    ) -> list[Notification]:
        if state == AgentState.THROTTLED and agent not in self.throttled:
            key = f"throttled:{agent}:{at:.6f}"
            self.throttled[agent] = key
            self.dirty = True
            return [say.throttled(agent, conversation, reason, at, key, waiting)]
        return []

    def _quota_changed(self, change: QuotaChanged) -> list[Notification]:
        """An account's window: notified once when it closes (keyed by the account and its
        end, so a restart does not send it again), forgotten when it opens."""
        if change.until is None:
            self._forget(self.quota, change.account)
            return []
        if change.restored or change.account in self.quota:
            return []
        key = f"quota:{change.account}:{change.until:.0f}"
        self.quota[change.account] = key
        self.dirty = True
        shown = self._shown.get((change.agent, change.conversation), ())  # its run's, ending
        return [say.quota(change, change.until, key, shown)]

    def _needs_input(
        self,
        agent: str,
        conversation: str,
        at: float,
        question: str | None,
        ids: Sequence[int],
        shown: Sequence[Event],
        ran: bool,
    ) -> list[Notification]:
        parked = _conversation_key(agent, conversation)
        if parked in self.parked:
            return []
        last = max(ids, default=0)
        key = f"needs-input:{agent}:{conversation}:{last if last else f'{at:.6f}'}"
        self.parked[parked] = key
        self.dirty = True
        return [say.needs_input(agent, conversation, at, question, ids, shown, ran, key)]

    def _agent_paused(self, change: AgentPaused) -> list[Notification]:
        if not change.paused:
            return []
        return [say.paused(change)]

    def _notice(self, change: Notice) -> list[Notification]:
        if change.level is not Level.ERROR:
            return []
        if change.topic == "tail-events":  # gave up on the stream, or cannot start it
            self._failed(change.at, change.message)
            return self._stream_failing(change.at, gave_up=True)
        if change.topic not in ("fatal", "internal"):
            return []
        return [say.internal_error(change)]

    # -- the stream
    def _failed(self, at: float, reason: str) -> None:
        if self._failing_since is None:
            self._failing_since = at
        self._failure = reason
        self._up_since = None

    def _source_exited(self, change: SourceExited) -> list[Notification]:
        if change.expected:  # stopped or restarted by ghit-work itself: not a failure
            self._up_since = None
            return []
        status = "could not start" if change.status is None else f"exit status {change.status}"
        self._failed(change.at, f"{status}: {change.reason}")
        return []

    def _source_retry(self, change: SourceRetry) -> list[Notification]:
        self._failed(change.at - change.used, change.reason)
        if change.used >= self.failing_after:
            return self._stream_failing(change.at)
        return []

    def _source_started(self, change: SourceStarted) -> list[Notification]:
        if self._failing_since is not None or self.stream_failing is not None:
            self._up_since = change.at
        return []

    def _events_routed(self, change: EventsRouted) -> list[Notification]:
        if self._up_since is None:  # the usual case: one comparison per read
            return []
        return self._healthy(change.at, "it reads events again")

    def due(self) -> float | None:
        """When `tick` has something to decide (None: nothing waits)."""
        moments = []
        if self._failing_since is not None and self.stream_failing is None:
            moments.append(self._failing_since + self.failing_after)
        if self._up_since is not None:
            moments.append(self._up_since + self.healthy_after)
        return min(moments, default=None)

    def tick(self, now: float) -> list[Notification]:
        found: list[Notification] = []
        if self._up_since is not None and now - self._up_since >= self.healthy_after:
            found += self._healthy(
                now, f"it has stayed up for {format_duration(now - self._up_since)}"
            )
        if (
            self._failing_since is not None
            and self.stream_failing is None
            and now - self._failing_since >= self.failing_after
        ):
            found += self._stream_failing(now)
        return found

    def _stream_failing(self, at: float, gave_up: bool = False) -> list[Notification]:
        since = self._failing_since if self._failing_since is not None else at
        if self.stream_failing is not None:
            return []  # this episode was sent already (maybe before a restart)
        self.stream_failing = since
        self.dirty = True
        return [say.stream_failing(since, at, self._failure, gave_up)]

    def _healthy(self, at: float, how: str) -> list[Notification]:
        notified = self.stream_failing
        self._failing_since, self._up_since, self._failure = None, None, ""
        if notified is None:
            return []  # its failure was never news: neither is its recovery
        self.stream_failing = None
        self.dirty = True
        return [say.stream_healthy(notified, at, how)]

    def _forget(self, kept: dict[str, str], key: str) -> None:
        if kept.pop(key, None) is not None:
            self.dirty = True


def _conversation_key(agent: str, conversation: str) -> str:
    return f"{agent}\n{conversation}"


_HANDLERS: dict[type[Change], Callable[[Causes, Any], list[Notification]]] = {
    RunStarted: Causes._run_started,
    RunFinished: Causes._run_finished,
    AgentChanged: Causes._agent_changed,
    ConversationsQueued: Causes._queued,
    AgentPaused: Causes._agent_paused,
    QuotaChanged: Causes._quota_changed,
    Notice: Causes._notice,
    SourceExited: Causes._source_exited,
    SourceRetry: Causes._source_retry,
    SourceStarted: Causes._source_started,
    EventsRouted: Causes._events_routed,
    DeadLettersLoaded: Causes._dead_letters_loaded,
}
