"""Scope strings and their hierarchy.

ghit does not document whether an event in a thread also lists its repo and team scopes, so a
scope covers its descendants: `team:T` covers `repo:teams/T/...` and `thread:teams/T/...`,
`repo:L` covers `thread:L/N`. `covering(scope)` lists every subscription that receives an event
carrying `scope`; matching is then a set lookup per event scope.
"""

from __future__ import annotations

import re

_FORMS = {
    "team": re.compile(r"[^\s/]+"),
    "repo": re.compile(r"[^\s/]+(?:/[^\s/]+)+"),
    "thread": re.compile(r"[^\s/]+(?:/[^\s/]+)+/\d+"),
    "user": re.compile(r"[^\s/]+"),
}
FORMS_HELP = "team:SLUG, repo:LOCATOR, thread:LOCATOR/N or user:NAME"


def scope_problem(scope: str) -> str | None:
    """Why `scope` cannot be subscribed to, or None when it is well formed."""
    if scope == "self":
        return (
            '"self" is resolved by the ghit server for the token\'s user and cannot be '
            'matched per agent; use "user:NAME"'
        )
    form, sep, rest = scope.partition(":")
    pattern = _FORMS.get(form)
    if not sep or pattern is None:
        return f'"{scope}" is not a scope; use {FORMS_HELP}'
    if not pattern.fullmatch(rest):
        return f'"{scope}" is not a well-formed {form} scope; use {FORMS_HELP}'
    return None


def covering(scope: str) -> tuple[str, ...]:
    """Every scope whose subscribers receive an event that carries `scope` (itself first).
    Not cached here: a cache of every thread ever seen grows with the forge (~290 bytes a
    thread); the Matcher keeps what it needs per repo."""
    form, _, rest = scope.partition(":")
    result = [scope]
    locator = ""
    if form == "thread":
        locator = rest.rpartition("/")[0]
        result.append(f"repo:{locator}")
    elif form == "repo":
        locator = rest
    parts = locator.split("/")
    if len(parts) >= 3 and parts[0] == "teams":
        result.append(f"team:{parts[1]}")
    return tuple(result)


def covers(subscription: str, scope: str) -> bool:
    """True when an agent subscribed to `subscription` receives an event carrying `scope`."""
    return subscription in covering(scope)
