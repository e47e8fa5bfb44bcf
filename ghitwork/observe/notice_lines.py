"""The status lines of the event stream (tail-events), notices, dead letters, stopping and
usage (`describe`'s handlers for those changes); observe/lines.py registers them by importing
this module."""

from __future__ import annotations

import shlex
from typing import Any

from ghitwork.bus.changes import (
    DeadLettersLoaded,
    DeadLettersRedelivered,
    EventSkipped,
    Level,
    Notice,
    SessionsLoaded,
    SourceExited,
    SourceRetry,
    SourceStarted,
    StopRequested,
    UsageLoaded,
)
from ghitwork.model.conversations import shown
from ghitwork.model.durations import format_duration
from ghitwork.observe.line import Line, count_events, describe


@describe.register
def _stop_requested(change: StopRequested) -> Line | None:
    return Line(Level.INFO, "stop", f"stop: {change.reason}: stopping", {"topic": "stop"})


@describe.register
def _usage_loaded(change: UsageLoaded) -> Line | None:
    return None  # the TUI's; nothing worth a status line


@describe.register
def _sessions_loaded(change: SessionsLoaded) -> Line | None:
    return None  # each is said when its next batch resumes it


@describe.register
def _dead_letters_loaded(change: DeadLettersLoaded) -> Line | None:
    count = len(change.letters)
    return Line(
        Level.WARNING,
        "dead_letter.kept",
        f"{count} dead letter{'s' if count != 1 else ''} kept in state_dir "
        f"({', '.join(str(letter.id) for letter in change.letters)}): "
        "ghit-work dead-letters lists them, ghit-work redeliver hands them back",
        {"dead_letters": [letter.id for letter in change.letters]},
    )


@describe.register
def _dead_letters_redelivered(change: DeadLettersRedelivered) -> Line | None:
    letters = change.letters
    ids = ", ".join(str(letter.id) for letter in letters)
    agents = ", ".join(dict.fromkeys(letter.agent for letter in letters))
    count = sum(len(letter.events) for letter in letters)
    return Line(
        Level.INFO,
        "dead_letter.redelivered",
        f"dead letter{'s' if len(letters) > 1 else ''} {ids} handed back to {agents} "
        f"({count_events(count)}) by {change.by or 'request'}",
        {
            "dead_letters": [letter.id for letter in letters],
            "agents": list(dict.fromkeys(letter.agent for letter in letters)),
            "event_ids": [i for letter in letters for i in letter.event_ids],
        },
    )


@describe.register
def _event_skipped(change: EventSkipped) -> Line | None:
    bad = change.malformed
    return Line(
        Level.WARNING,
        "event.malformed",
        f"tail-events: malformed input skipped ({bad.reason}): {bad.excerpt}",
        {"reason": bad.reason, "excerpt": bad.excerpt},
    )


@describe.register
def _source_started(change: SourceStarted) -> Line | None:
    resume = f" from event {change.cursor}" if change.cursor is not None else ""
    return Line(
        Level.INFO,
        "source.start",
        f"tail-events: started (pid {change.pid}){resume}: {shlex.join(change.argv)}",
        {"pid": change.pid, "argv": list(change.argv), "cursor": change.cursor},
    )


@describe.register
def _source_exited(change: SourceExited) -> Line | None:
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


@describe.register
def _source_retry(change: SourceRetry) -> Line | None:
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


@describe.register
def _notice(change: Notice) -> Line | None:
    if change.topic.startswith("agent.") and change.agent:
        return Line(
            change.level,
            "agent.output",
            f"agent {change.agent}| {change.message}",
            {"agent": change.agent, "stream": change.topic[6:]},
        )
    prefix = (
        f"{shown(change.agent, change.conversation)}: " if change.agent else f"{change.topic}: "
    )
    fields: dict[str, Any] = {"topic": change.topic}
    if change.agent:
        fields["agent"] = change.agent
    if change.conversation:
        fields["conversation"] = change.conversation
    return Line(change.level, change.topic, prefix + change.message, fields)
