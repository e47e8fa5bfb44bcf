"""Conversations (SPEC §12): which conversation of an agent an event belongs to, and the
name of its workspace.

With `conversations = "thread"` an event belongs to the conversation named by its first
`thread:` scope, and an event with no `thread:` scope to the agent's own conversation (`""`);
with `"agent"` (the default) every event belongs to the agent's own conversation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ghitwork.model.events import Event

AGENT = "agent"  # one conversation per agent (the default)
THREAD = "thread"  # one conversation per thread
MODES = (AGENT, THREAD)
OWN = ""  # the agent's own conversation: events with no thread (or every event, in agent mode)
OWN_SLUG = "_agent"  # its {conversation_slug}: no thread locator gives it (they hold a '/')
SLUG_PLACEHOLDER = "{conversation_slug}"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def conversation_of(event: Event) -> str:
    """The conversation of `event` in thread mode: its first `thread:` scope, or `""`."""
    for scope in event.scopes:
        if scope.startswith("thread:"):
            return scope
    return OWN


def split(events: Sequence[Event]) -> list[tuple[str, tuple[Event, ...]]]:
    """`events` (in id order) per conversation, each in id order, conversations in order of
    their first event."""
    if len(events) == 1:
        return [(conversation_of(events[0]), tuple(events))]
    found: dict[str, list[Event]] = {}
    for event in events:
        for key in event.scopes:  # conversation_of, inline: it runs for every event
            if key.startswith("thread:"):
                break
        else:
            key = OWN
        kept = found.get(key)
        if kept is None:
            found[key] = [event]
        else:
            kept.append(event)
    return [(key, tuple(kept)) for key, kept in found.items()]


def slug(conversation: str) -> str:
    """The conversation as one path component: the thread locator with `/` as `-`
    (`thread:teams/ghit/ghit/39` -> `teams-ghit-ghit-39`); any other character than a
    letter, digit, `.`, `_` or `-` as `_`, and never `.` or `..` or a leading `.`. The
    agent's own conversation is `_agent`."""
    if conversation == OWN:
        return OWN_SLUG
    locator = conversation.removeprefix("thread:")
    text = _UNSAFE.sub("_", locator.replace("/", "-"))
    return "_" + text[1:] if text.startswith(".") else text or "_"


def workdir_of(template: str, conversation: str) -> str:
    """An agent's `workdir` for `conversation` (`{conversation_slug}` replaced)."""
    return template.replace(SLUG_PLACEHOLDER, slug(conversation))


def shown(agent: str, conversation: str) -> str:
    """How status lines name a conversation: `agent a`, or `agent a [thread:...]`."""
    return f"agent {agent} [{conversation}]" if conversation else f"agent {agent}"


def main_scope(event: Event) -> str:
    """The most specific scope of an event (its thread, if it has one)."""
    return conversation_of(event) or (event.scopes[0] if event.scopes else "(no scope)")
