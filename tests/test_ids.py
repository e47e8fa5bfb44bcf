"""model/ids.py: a set of event ids as a sorted array, which must answer as a set would,
ids past 64 bits included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ghitwork.model.ids import Ids

IDS = st.one_of(st.integers(1, 40), st.integers(2**63 - 3, 2**63 + 3))
OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "discard", "update", "difference_update"]),
        st.lists(IDS, max_size=6),
    ),
    max_size=60,
)


@given(st.lists(IDS), OPS)
def test_it_answers_as_a_set_would(start: list[int], ops: list[tuple[str, list[int]]]) -> None:
    model, ids = set(start), Ids(start)
    for op, values in ops:
        if op in ("add", "discard"):
            for value in values:
                getattr(model, op)(value)
                getattr(ids, op)(value)
        else:
            getattr(model, op)(values)
            getattr(ids, op)(values)
        assert list(ids) == sorted(model)
    assert len(ids) == len(model) and bool(ids) == bool(model) and ids == model
    for value in (*range(0, 42), *range(2**63 - 4, 2**63 + 4), "1", None):
        assert (value in ids) == (value in model)


def test_ids_in_journal_order_are_appended_in_place() -> None:
    ids = Ids()
    ids.update([1, 2, 3])
    held = ids._ids
    ids.update([7, 9])
    ids.add(10)
    assert ids._ids is held and list(ids) == [1, 2, 3, 7, 9, 10]
    assert held.itemsize == 8  # type: ignore[attr-defined]  # an array of 64-bit integers
