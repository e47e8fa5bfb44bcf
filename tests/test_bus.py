"""The state bus's per-type dispatch (`bus.changes.handlers`): each subscriber's handler for a
change's type, bound to that subscriber, found again in a dict."""

from __future__ import annotations

import functools

from ghitwork.bus.changes import Change, EventsRouted, Level, Notice, handlers


class Seen:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.handle = handlers(vars(Seen)["_on"], self)

    @functools.singledispatchmethod
    def _on(self, change: Change) -> str:
        return "other"

    @_on.register
    def _notice(self, change: Notice) -> str:
        self.seen.append(change.message)
        return "notice"


class Special(Notice, frozen=True, kw_only=True):
    """A subtype of a registered Change type."""


def notice(message: str) -> Notice:
    return Notice(level=Level.INFO, topic="t", message=message)


def test_each_change_goes_to_its_types_handler_bound_to_its_owner() -> None:
    first, second = Seen(), Seen()
    assert first.handle(notice("a")) == "notice"
    assert first.handle(EventsRouted(routes=())) == "other"
    assert first.handle(notice("b")) == "notice"  # found again
    assert second.handle(notice("c")) == "notice"
    assert (first.seen, second.seen) == (["a", "b"], ["c"])


def test_a_subtype_gets_the_handler_of_the_type_it_extends() -> None:
    seen = Seen()
    assert seen.handle(Special(level=Level.INFO, topic="t", message="s")) == "notice"
    assert seen.seen == ["s"]
