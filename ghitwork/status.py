"""Status lines: one compact, greppable line per state change (text or JSON).

A subscriber of the state bus. `describe` turns a change into a `Line`; `StatusWriter` prints
the lines at or above the chosen level, with the ghit token redacted.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ghitwork.archive import iso
from ghitwork.durations import clock_time, format_duration
from ghitwork.events import Event
from ghitwork.policy import describe_retry
from ghitwork.state import (
    AgentChanged,
    AgentState,
    Change,
    DeadLettersLoaded,
    DeadLettersRedelivered,
    EventSkipped,
    EventsRouted,
    Level,
    Notice,
    RunFinished,
    RunStarted,
    SourceExited,
    SourceRetry,
    SourceStarted,
    StopRequested,
    UsageLoaded,
)

LEVELS = {Level.DEBUG: 10, Level.INFO: 20, Level.WARNING: 30, Level.ERROR: 40}


@dataclass(frozen=True, slots=True)
class Line:
    level: Level
    event: str  # a stable name for log shippers: agent.state, run.start, source.retry, ...
    message: str
    fields: dict[str, Any] = field(default_factory=dict)


def id_ranges(ids: Sequence[int], most: int = 8) -> str:
    """1,2,3,7,9,10 -> "1-3,7,9-10"; long lists are cut with "… (N in all)"."""
    parts: list[str] = []
    start = prev = None
    for ident in ids:
        if prev is not None and ident == prev + 1:
            prev = ident
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = ident
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    if len(parts) > most:
        return ",".join(parts[:most]) + f",… ({len(ids)} in all)"
    return ",".join(parts)


def _events(count: int) -> str:
    return f"{count} event" + ("" if count == 1 else "s")


def routed_line(event: Event, agents: tuple[str, ...]) -> Line:
    """The debug line of one event read from the stream."""
    who = ", ".join(agents) if agents else "no agent"
    by = f" by {event.actor}" if event.actor else ""
    return Line(
        Level.DEBUG,
        "event.routed",
        f"event {event.id} {event.kind}{by} in {' '.join(event.scopes)} -> {who}",
        {
            "event_id": event.id,
            "kind": event.kind,
            "actor": event.actor,
            "scopes": list(event.scopes),
            "agents": list(agents),
        },
    )


def _finished(change: RunFinished) -> Line:
    result = change.result
    level = Level.INFO if result.ok else Level.WARNING
    message = (
        f"agent {change.agent}: working -> {change.new}, {result.describe()} after "
        f"{format_duration(result.duration)} [{id_ranges(result.event_ids)}]"
    )
    fields: dict[str, Any] = {"attempt": result.attempt, "attempts": change.attempts}
    if result.usage is not None:
        message += f"; {result.usage.describe()}"
        fields.update(result.usage.to_json())
    if result.stopped:
        message += "; stopped, its events will be delivered again"
    else:
        if not result.ok and result.last_stderr:
            message += f"; stderr: {result.last_stderr}"
        if change.retry is not None and change.retry_at is not None:
            retry = change.retry
            message += "; " + describe_retry(retry, change.attempts, clock_time(change.retry_at))
            fields.update(
                retry_attempt=retry.attempt,
                retry_at=timestamp(change.retry_at),
                retry_in=round(retry.delay, 3),
                rate_limited=retry.rate_limited,
            )
        letter = change.dead_letter
        if letter is not None:
            level = Level.ERROR
            plural = "s" if letter.attempts != 1 else ""
            why = (
                "not retried"
                if result.operator_stopped
                else f"gave up after {letter.attempts} attempt{plural}"
            )
            message += (
                f"; {why}: dead letter {letter.id} ({_events(len(letter.events))}; "
                f"`ghit-work redeliver {letter.id}` hands it back)"
            )
            fields["dead_letter"] = letter.id
    if change.queue:
        message += f"; {_events(change.queue)} waiting"
    if result.log_files:
        message += f"; logs {result.log_files[0].rsplit('.', 1)[0]}.*"
    return Line(
        level,
        "agent.state",
        message,
        {
            "agent": change.agent,
            "from": "working",
            "to": str(change.new),
            "outcome": result.outcome,
            "exit_status": result.returncode,
            "signal": result.signal,
            "error": result.error,
            "timed_out": result.timed_out,
            "stalled": result.stalled,
            "stopped": result.stopped,
            "duration": round(result.duration, 3),
            "event_ids": list(result.event_ids),
            "session_id": result.session_id,
            "queue": change.queue,
            "log_files": list(result.log_files),
            **fields,
        },
    )


def only_info(change: Change) -> bool:
    """A change whose line is INFO for sure, told without building it: under --log-level
    warning a catch-up's thousands of run lines cost nothing."""
    if isinstance(change, RunStarted):
        return True
    if isinstance(change, RunFinished):
        return change.result.ok and change.dead_letter is None
    if isinstance(change, AgentChanged):
        return change.new not in (AgentState.FAILING, AgentState.THROTTLED)
    return False


def describe(change: Change) -> Line | None:
    if isinstance(change, RunStarted):
        extra = []
        if change.attempt > 1:
            extra.append(f"attempt {change.attempt}/{change.attempts}")
        if change.resumed:
            extra.append(f"resuming session {change.session_id}")
        if change.redelivered:
            extra.append("redelivered")
        tail = f"; {', '.join(extra)}" if extra else ""
        return Line(
            Level.INFO,
            "agent.state",
            f"agent {change.agent}: {change.old} -> working, batch of "
            f"{_events(len(change.event_ids))} [{id_ranges(change.event_ids)}]{tail}",
            {
                "agent": change.agent,
                "from": str(change.old),
                "to": "working",
                "batch": len(change.event_ids),
                "event_ids": list(change.event_ids),
                "resumed": change.resumed,
                "redelivered": change.redelivered,
                "session_id": change.session_id,
                "attempt": change.attempt,
                "attempts": change.attempts,
            },
        )
    if isinstance(change, RunFinished):
        return _finished(change)
    if isinstance(change, StopRequested):
        return Line(Level.INFO, "stop", f"stop: {change.reason}: stopping", {"topic": "stop"})
    if isinstance(change, UsageLoaded):
        return None  # the TUI's; nothing worth a status line
    if isinstance(change, DeadLettersLoaded):
        count = len(change.letters)
        return Line(
            Level.WARNING,
            "dead_letter.kept",
            f"{count} dead letter{'s' if count != 1 else ''} kept in state_dir "
            f"({', '.join(str(letter.id) for letter in change.letters)}): "
            "ghit-work dead-letters lists them, ghit-work redeliver hands them back",
            {"dead_letters": [letter.id for letter in change.letters]},
        )
    if isinstance(change, DeadLettersRedelivered):
        letters = change.letters
        ids = ", ".join(str(letter.id) for letter in letters)
        agents = ", ".join(dict.fromkeys(letter.agent for letter in letters))
        count = sum(len(letter.events) for letter in letters)
        return Line(
            Level.INFO,
            "dead_letter.redelivered",
            f"dead letter{'s' if len(letters) > 1 else ''} {ids} handed back to {agents} "
            f"({_events(count)}) by {change.by or 'request'}",
            {
                "dead_letters": [letter.id for letter in letters],
                "agents": list(dict.fromkeys(letter.agent for letter in letters)),
                "event_ids": [i for letter in letters for i in letter.event_ids],
            },
        )
    if isinstance(change, AgentChanged):
        level = {AgentState.FAILING: Level.ERROR, AgentState.THROTTLED: Level.WARNING}.get(
            change.new, Level.INFO
        )
        message = f"agent {change.agent}: {change.old} -> {change.new}"
        if change.queue:
            message += f", {_events(change.queue)} waiting"
        if change.reason:
            message += f"; {change.reason}"
        return Line(
            level,
            "agent.state",
            message,
            {
                "agent": change.agent,
                "from": str(change.old),
                "to": str(change.new),
                "queue": change.queue,
                "reason": change.reason,
            },
        )
    if isinstance(change, EventSkipped):
        bad = change.malformed
        return Line(
            Level.WARNING,
            "event.malformed",
            f"tail-events: malformed input skipped ({bad.reason}): {bad.excerpt}",
            {"reason": bad.reason, "excerpt": bad.excerpt},
        )
    if isinstance(change, SourceStarted):
        resume = f" from event {change.cursor}" if change.cursor is not None else ""
        return Line(
            Level.INFO,
            "source.start",
            f"tail-events: started (pid {change.pid}){resume}: {shlex.join(change.argv)}",
            {"pid": change.pid, "argv": list(change.argv), "cursor": change.cursor},
        )
    if isinstance(change, SourceExited):
        if change.status is None:
            message = f"tail-events: {change.reason}"
        else:
            message = f"tail-events: exited with status {change.status} ({change.reason})"
        quiet = change.status == 0 or change.expected
        return Line(
            Level.INFO if quiet else Level.WARNING,
            "source.exit",
            message,
            {"status": change.status, "reason": change.reason},
        )
    if isinstance(change, SourceRetry):
        return Line(
            Level.WARNING,
            "source.retry",
            f"tail-events: retry in {format_duration(change.delay)} "
            f"({format_duration(change.used)} of the {format_duration(change.window)} "
            f"retry window used) after {change.reason}",
            {
                "delay": round(change.delay, 3),
                "used": round(change.used, 3),
                "window": change.window,
                "reason": change.reason,
            },
        )
    if isinstance(change, Notice):
        if change.topic.startswith("agent.") and change.agent:
            return Line(
                change.level,
                "agent.output",
                f"agent {change.agent}| {change.message}",
                {"agent": change.agent, "stream": change.topic[6:]},
            )
        prefix = f"agent {change.agent}: " if change.agent else f"{change.topic}: "
        fields: dict[str, Any] = {"topic": change.topic}
        if change.agent:
            fields["agent"] = change.agent
        return Line(change.level, change.topic, prefix + change.message, fields)
    return None


timestamp = iso  # a status line's time: UTC, milliseconds, "Z"


class StatusWriter:
    """Prints status lines to `stream`; a subscriber of the state bus."""

    def __init__(
        self,
        stream: TextIO | None = None,
        level: Level = Level.INFO,
        json_format: bool = False,
        secrets: Iterable[str] = (),
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.threshold = LEVELS[level]
        self.json = json_format
        self.secrets = [s for s in secrets if len(s) >= 4]

    def enabled(self, level: Level) -> bool:
        return LEVELS[level] >= self.threshold

    def __call__(self, change: Change) -> None:
        if isinstance(change, EventsRouted):
            if self.threshold <= LEVELS[Level.DEBUG]:  # the per-event path stays cheap
                for event, agents in change.routes:
                    self._write(change.at, routed_line(event, agents))
            return
        if self.threshold > LEVELS[Level.INFO] and only_info(change):
            return
        line = describe(change)
        if line is not None and self.enabled(line.level):
            self._write(change.at, line)

    def _write(self, moment: float, line: Line) -> None:
        self.stream.write(self.format(moment, line) + "\n")
        self.stream.flush()

    def format(self, moment: float, line: Line) -> str:
        if self.json:
            record = {
                "time": timestamp(moment),
                "level": str(line.level),
                "event": line.event,
                **line.fields,
                "message": line.message,
            }
            text = json.dumps(record, ensure_ascii=False, default=str)
        else:
            text = f"{timestamp(moment)} {line.level.upper():<7} {line.message}"
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text
