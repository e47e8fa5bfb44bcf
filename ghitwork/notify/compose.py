"""Notifications' text (SPEC §13): what a cause says, composed before it is sent.

`compose` lays out any notification (what happened, then the agent, its conversation, the
event ids, the thread's web URL, when, the host, what to do); one function per cause
(`throttled`, `quota`, `needs_input`, `paused`, `internal_error`, `stream_failing`,
`stream_healthy`, `dead_letter`) says it. `causes.Causes` decides when, and which key.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from ghitwork.bus.changes import AgentPaused, Notice, QuotaChanged
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.durations import format_duration
from ghitwork.model.events import Event, objects
from ghitwork.model.formatting import id_ranges, iso

LINKS_SHOWN = 5  # events' own links listed in a notification (beyond the thread's)
OWN = "(the agent's own)"  # the conversation `""` (SPEC §12), as shown

# Apprise's notification types (apprise.NotifyType's values)
INFO, SUCCESS, WARNING, FAILURE = "info", "success", "warning", "failure"


class Notification(msgspec.Struct, frozen=True):
    """One notification, before it is sent to any target: redacted by the notifier."""

    cause: str  # one of config.model.NOTIFY_CAUSES
    key: str  # the cause's identity: one key notifies once (the outbox keeps the keys)
    agent: str | None  # None: not an agent's (the stream, ghit-work itself)
    title: str
    body: str
    kind: str = INFO  # INFO, SUCCESS, WARNING or FAILURE
    at: float = 0.0
    conversation: str = ""
    event_ids: tuple[int, ...] = ()
    web_url: str | None = None


@functools.cache
def host_name() -> str:
    return socket.gethostname()


def thread_url(url: str) -> str:
    """An event's web URL as its thread's: without the query (`?reply_root=12`) and
    fragment that point into the thread."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def web_url(event: Mapping[str, Any]) -> str | None:
    summary = event.get("summary")
    if isinstance(summary, Mapping):
        url = summary.get("web_url")
        if isinstance(url, str) and url:
            return url
    return None


def _event_ids(events: Iterable[Mapping[str, Any]]) -> tuple[int, ...]:
    ids = []
    for event in events:
        try:
            ids.append(int(event["id"]))
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(ids)


def compose(
    cause: str,
    key: str,
    *,
    title: str,
    what: str,
    at: float,
    kind: str,
    agent: str | None = None,
    conversation: str = "",
    event_ids: Sequence[int] = (),
    events: Sequence[Mapping[str, Any]] = (),
    hint: str = "",
) -> Notification:
    """A notification's text: what happened first, then the agent, its conversation, the
    event ids and the thread's web URL (from the events' `summary.web_url`), each on its own
    line so that a reader (or a filter) finds them, then what to do about it."""
    lines = [what, ""]
    if agent is not None:
        lines.append(f"agent: {agent}")
        lines.append(f"conversation: {conversation or OWN}")
    ids = tuple(event_ids) or _event_ids(events)
    if ids:
        lines.append(f"events: {id_ranges(sorted(ids), most=20)}")
    urls = [(event.get("id"), url) for event in events if (url := web_url(event))]
    thread = thread_url(urls[0][1]) if urls else None
    if thread is not None:
        lines.append(f"thread: {thread}")
        links = [(ident, url) for ident, url in urls if url != thread][:LINKS_SHOWN]
        for ident, url in links:
            lines.append(f"  event {ident}: {url}")
    lines.append(f"when: {iso(at)}")
    lines.append(f"host: {host_name()}")
    if hint:
        lines += ["", hint]
    return Notification(
        cause=cause,
        key=key,
        agent=agent,
        title=f"ghit-work: {title}",
        body="\n".join(lines),
        kind=kind,
        at=at,
        conversation=conversation,
        event_ids=ids,
        web_url=thread,
    )


def throttled(
    agent: str,
    conversation: str,
    reason: str,
    at: float,
    key: str,
    waiting: Sequence[Event] = (),
) -> Notification:
    why = f": {reason}" if reason else " (its run budget is used up)"
    return compose(
        "throttled",
        key,
        title=f"{agent} is throttled",
        what=f"{agent} is throttled{why}. Its events keep queueing; it runs "
        "again when its budget allows.",
        at=at,
        kind=WARNING,
        agent=agent,
        conversation=conversation,
        events=objects(waiting),
        hint="See docs/budgets.md to change its budget.",
    )


def quota(
    change: QuotaChanged, until: float, key: str, shown: Sequence[Event] = ()
) -> Notification:
    agents = ", ".join(change.agents) or change.agent
    said = f" {change.agent}'s run said: {change.reason}" if change.reason else ""
    return compose(
        "quota",
        key,
        title=f"account {change.account} is out of quota",
        what=f"The usage limit of account {change.account} is reached until "
        f"{iso(until)}.{said} No run of {agents} starts until then; their "
        "events keep queueing.",
        at=change.at,
        kind=WARNING,
        agent=change.agent or None,
        conversation=change.conversation,
        event_ids=change.event_ids,
        events=objects(shown),
        hint="See docs/agents.md, Quota windows.",
    )


def needs_input(
    agent: str,
    conversation: str,
    at: float,
    question: str | None,
    ids: Sequence[int],
    shown: Sequence[Event],
    ran: bool,
    key: str,
) -> Notification:
    asked = f" It asks: {question}" if question else ""
    where = f" in {conversation}" if conversation else ""
    resume = f"ghit-work resume {agent}" + (f" {conversation}" if conversation else "")
    return compose(
        "needs-input",
        key,
        title=f"{agent} needs input" + (f" ({conversation})" if conversation else ""),
        what=(
            f"{agent} needs a human{where}: its run ended asking for input."
            if ran
            else f"{agent} waits for a human{where}."
        )
        + asked,
        at=at,
        kind=WARNING,
        agent=agent,
        conversation=conversation,
        event_ids=ids,
        events=objects(shown),
        hint=(
            "Answer in the thread: the next event there that is not its own wakes it, "
            f"resuming its session. Or wake it by hand: {resume}"
        ),
    )


def paused(change: AgentPaused) -> Notification:
    since = change.since or change.at
    until = f" until {iso(change.until)}" if change.until else " until resumed"
    by = f" by {change.by}" if change.by else ""
    reason = f" ({change.reason})" if change.reason else ""
    was = f"is paused (since {iso(since)})" if change.restored else "was paused"
    return compose(
        "paused",
        f"paused:{change.agent}:{since:.6f}",
        title=f"{change.agent} is paused",
        what=f"{change.agent} {was}{by}{until}{reason}. No run starts; its events keep queueing.",
        at=change.at,
        kind=WARNING,
        agent=change.agent,
        hint=f"Resume it with: ghit-work resume {change.agent}",
    )


def internal_error(change: Notice) -> Notification:
    what = (
        "ghit-work stops: " if change.topic == "fatal" else "ghit-work hit an internal error: "
    ) + change.message
    return compose(
        "internal-error",
        f"internal-error:{change.topic}:{change.at:.6f}",
        title="ghit-work stops (fatal error)" if change.topic == "fatal" else "internal error",
        what=what,
        at=change.at,
        kind=FAILURE,
        agent=change.agent,
    )


def stream_failing(since: float, at: float, failure: str, gave_up: bool) -> Notification:
    what = (
        f"ghit-work gave up on the event stream: {failure}"
        if gave_up
        else f"The event stream (tail-events) has been failing for "
        f"{format_duration(max(at - since, 0.0))}: {failure}"
    )
    return compose(
        "stream-failing",
        f"stream-failing:{since:.6f}",
        title="the event stream is failing",
        what=what + ". No agent is given new events until it is back.",
        at=at,
        kind=FAILURE,
        hint="ghit-work restarts it with backoff within its retry window, then exits "
        "with status 3 for its supervisor (docs/operations.md).",
    )


def stream_healthy(notified: float, at: float, how: str) -> Notification:
    return compose(
        "stream-healthy",
        f"stream-healthy:{notified:.6f}",
        title="the event stream is healthy again",
        what=f"The event stream (tail-events) is healthy again: {how}, after "
        f"{format_duration(max(at - notified, 0.0))} of trouble.",
        at=at,
        kind=SUCCESS,
    )


def dead_letter(letter: DeadLetter, at: float, stderr: str = "") -> Notification:
    attempts = f"{letter.attempts} attempt{'s' if letter.attempts != 1 else ''}"
    said = f" Its last line on stderr: {stderr.strip()}" if stderr.strip() else ""
    return compose(
        "dead-letter",
        f"dead-letter:{letter.id}",
        title=f"dead letter {letter.id} ({letter.agent})",
        what=f"{letter.agent}'s batch became dead letter {letter.id} after {attempts}: "
        f"{letter.error}.{said}",
        at=at,
        kind=FAILURE,
        agent=letter.agent,
        conversation=letter.conversation,
        events=letter.events,
        hint=f"See it with `ghit-work dead-letters`; hand it back with "
        f"`ghit-work redeliver {letter.id}`.",
    )
