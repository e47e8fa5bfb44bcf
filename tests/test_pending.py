"""A state dir's queued events as they are read back (persist/pending.py): a list and the
removals since it was settled, which must answer exactly as the dict keyed by id it replaced."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ghitwork.model.events import Event
from ghitwork.persist.pending import Pending, ident

# (op, id, version): add the event `id` (its version tells two adds of one id apart), or remove it
OPS = st.lists(
    st.tuples(st.sampled_from(["add", "discard"]), st.integers(1, 12), st.integers(0, 3)),
    max_size=400,
)


def saved(event_id: int, version: int) -> dict[str, Any] | Event:
    if version % 2:
        return Event(event_id, f"v{version}", None, (), None, b"")
    return {"id": event_id, "kind": f"v{version}"}


def kind(event: dict[str, Any] | Event) -> str:
    return event.kind if isinstance(event, Event) else str(event["kind"])


@given(st.sets(st.integers(1, 12)), OPS, st.lists(st.integers(0, 400), max_size=5))
def test_it_answers_as_a_dict_keyed_by_id_would(
    start: set[int], ops: list[tuple[str, int, int]], reads: list[int]
) -> None:
    """Empty, or the flow's events taken as they are (`ordered`, at a snapshot), then a
    journal's adds and removals."""
    model: dict[int, dict[str, Any] | Event] = {i: saved(i, 1) for i in sorted(start)}
    pending = Pending.ordered([saved(i, 1) for i in sorted(start)]) if start else Pending()
    for step, (op, event_id, version) in enumerate(ops):
        if op == "add":
            model[event_id] = saved(event_id, version)
            pending.add(saved(event_id, version))
        else:
            model.pop(event_id, None)
            pending.discard(event_id)
        if step in reads:  # reading it part way (it settles) changes nothing after
            assert list(pending) == sorted(model)
    assert list(pending) == sorted(model)
    assert [kind(e) for e in pending.events()] == [kind(model[i]) for i in sorted(model)]
    assert [ident(e) for e in pending.events()] == sorted(model)
    assert len(pending) == len(model) and bool(pending) == bool(model)
    for event_id in range(1, 13):
        assert (event_id in pending) == (event_id in model)
        if event_id in model:
            assert kind(pending[event_id]) == kind(model[event_id])
    assert pending == model


def test_a_journal_that_removes_most_of_what_it_adds_keeps_its_removals_bounded() -> None:
    pending = Pending()
    for event_id in range(1, 10_001):
        pending.add(saved(event_id, 0))
        if event_id % 10:  # nine of ten delivered
            pending.discard(event_id)
        assert len(pending._gone) <= max(65, len(pending._events))
    assert list(pending) == list(range(10, 10_001, 10))
