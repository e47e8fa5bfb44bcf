"""The status lines of runs and of agent and conversation states (`describe`'s handlers for
RunStarted, RunFinished, AgentChanged, AgentPaused, QuotaChanged, WorkspaceChanged, and
`only_info`'s); observe/lines.py registers them by importing this module."""

from __future__ import annotations

from typing import Any

from ghitwork.bus.changes import (
    AgentChanged,
    AgentPaused,
    AgentState,
    ConversationsQueued,
    Level,
    QuotaChanged,
    RunFinished,
    RunStarted,
    WorkspaceChanged,
)
from ghitwork.flow.policy import describe_retry
from ghitwork.model.conversations import shown
from ghitwork.model.durations import clock_time, format_duration
from ghitwork.model.formatting import id_ranges, pause_text
from ghitwork.observe.line import Line, count_events, describe, only_info, timestamp


def _finished(change: RunFinished) -> Line:
    result = change.result
    level = Level.INFO if result.ok else Level.WARNING
    message = (
        f"{shown(change.agent, change.conversation)}: working -> {change.new}, "
        f"{result.describe()} after "
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
            message += "; " + describe_retry(
                retry, change.attempts, clock_time(change.retry_at, change.at)
            )
            fields.update(
                retry_attempt=retry.attempt,
                retry_at=timestamp(change.retry_at),
                retry_in=round(retry.delay, 3),
                rate_limited=retry.rate_limited,
            )
        if change.new is AgentState.NEEDS_INPUT:
            level = Level.WARNING
            message += _asks(change.agent, result.question)
            fields["question"] = result.question
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
                f"; {why}: dead letter {letter.id} ({count_events(len(letter.events))}; "
                f"`ghit-work redeliver {letter.id}` hands it back)"
            )
            fields["dead_letter"] = letter.id
    if change.queue:
        message += f"; {count_events(change.queue)} waiting"
    if result.log_files:
        message += f"; logs {result.log_files[0].rsplit('.', 1)[0]}.*"
    return Line(
        level,
        "agent.state",
        message,
        {
            "agent": change.agent,
            "conversation": change.conversation,
            "from": "working",
            "to": str(change.new),
            "outcome": result.outcome,
            "exit_status": result.returncode,
            "signal": result.signal,
            "error": result.error,
            "fault": result.fault,
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


@only_info.register
def _started_is_info(change: RunStarted) -> bool:
    return True


@only_info.register
def _finished_is_info(change: RunFinished) -> bool:
    return change.result.ok and change.dead_letter is None


def _asks(agent: str, question: str | None) -> str:
    """What a conversation waiting for a human says, the question first (SPEC §13)."""
    asked = f": {question}" if question else ""
    return f"; it needs input{asked} (its next event wakes it, or `ghit-work resume {agent}`)"


@only_info.register
def _changed_is_info(change: AgentChanged) -> bool:
    return change.new not in (AgentState.THROTTLED, AgentState.NEEDS_INPUT)


@only_info.register
def _queued_is_info(change: ConversationsQueued) -> bool:
    return True


@describe.register
def _run_started(change: RunStarted) -> Line | None:
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
        f"{shown(change.agent, change.conversation)}: {change.old} -> working, batch of "
        f"{count_events(len(change.event_ids))} [{id_ranges(change.event_ids)}]{tail}",
        {
            "agent": change.agent,
            "conversation": change.conversation,
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


@describe.register
def _run_finished(change: RunFinished) -> Line | None:
    return _finished(change)


@describe.register
def _agent_paused(change: AgentPaused) -> Line | None:
    """An agent paused or resumed (SPEC §13)."""
    if change.paused:
        again = " (kept from before the restart)" if change.restored else ""
        message = (
            f"agent {change.agent}: {pause_text(change.until, change.by, change.reason)}{again}"
        )
    else:
        message = f"agent {change.agent}: resumed by {change.by or 'the operator'}"
    return Line(
        Level.WARNING if change.paused and not change.restored else Level.INFO,
        "control",
        message,
        {
            "agent": change.agent,
            "paused": change.paused,
            "until": timestamp(change.until) if change.until is not None else None,
            "reason": change.reason,
            "by": change.by,
            "restored": change.restored,
        },
    )


@describe.register
def _quota_changed(change: QuotaChanged) -> Line | None:
    """An account's usage limit reached, or its window over (SPEC §14)."""
    agents = ", ".join(change.agents) or "none"
    if change.until is None:
        message = f"account {change.account}: usage limit window over; {agents} run again"
        level = Level.INFO
    else:
        said = f" ({change.agent}: {change.reason})" if change.agent and change.reason else ""
        again = " (kept from before the restart)" if change.restored else ""
        until, left = clock_time(change.until, change.at), max(0.0, change.until - change.at)
        message = (
            f"account {change.account}: usage limit reached{said}; no run of {agents} until "
            f"{until} (in {format_duration(left)}){again}"
        )
        level = Level.INFO if change.restored else Level.WARNING
    return Line(
        level,
        "quota",
        message,
        {
            "account": change.account,
            "until": timestamp(change.until) if change.until is not None else None,
            "agents": list(change.agents),
            "agent": change.agent,
            "reason": change.reason,
            "restored": change.restored,
        },
    )


@describe.register
def _agent_changed(change: AgentChanged) -> Line | None:
    level = Level.WARNING if change.new is AgentState.THROTTLED else Level.INFO
    message = f"{shown(change.agent, change.conversation)}: {change.old} -> {change.new}"
    if change.queue:
        message += f", {count_events(change.queue)} waiting"
    if change.new is AgentState.NEEDS_INPUT:  # still asking, since before a restart
        level = Level.WARNING  # a human is wanted: the attention pane, as when it asked
        message += _asks(change.agent, change.reason) + "; kept from before the restart"
    elif change.reason:
        message += f"; {change.reason}"
    return Line(
        level,
        "agent.state",
        message,
        {
            "agent": change.agent,
            "conversation": change.conversation,
            "from": str(change.old),
            "to": str(change.new),
            "queue": change.queue,
            "reason": change.reason,
        },
    )


@describe.register
def _workspace_changed(change: WorkspaceChanged) -> Line | None:
    """A conversation's workspace set up or removed (info); used by a run (debug only)."""
    who = shown(change.agent, change.conversation)
    level = Level.INFO
    if not change.ready:
        idle = (
            f" after {format_duration(max(0.0, change.at - change.used))} idle"
            if change.used is not None
            else ""
        )
        message = f"{who}: workspace removed{idle}: {change.path}"
    elif change.used is None:
        message = f"{who}: workspace ready: {change.path}"
    else:
        level = Level.DEBUG
        message = f"{who}: workspace used: {change.path}"
    fields: dict[str, Any] = {
        "agent": change.agent,
        "conversation": change.conversation,
        "path": change.path,
        "ready": change.ready,
        "used": timestamp(change.used) if change.used is not None else None,
    }
    return Line(level, "workspace", message, fields)
