"""A set of event ids held as a sorted array of 64-bit integers: 8 bytes an id, where a `set`
of 3,000 ids has a table of 128 KB and each id parsed from JSON is an object of 32 bytes.

Ids mark the events in flight when a state dir was written (the journal's `start` records)
and, in a conversation, those it must deliver again (a restart's in-flight batches, a retried
batch). A restart of 20 agents whose batches held 3,000 events each held 4.5 MB of such sets
that the crashed instance never had (`benchmarks/recovery.py`: the restart's peak memory).
Membership is a binary search. Adding past the largest id (a journal's order) appends;
anything else moves part of the array, which is small but at a restart. An id past 64 bits
(ghit's ids are not, but nothing says so) turns it into a list, as exact and less compact.
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from collections.abc import Iterable, Iterator, MutableSequence


def _held(ids: list[int]) -> MutableSequence[int]:
    try:
        return array("q", ids)
    except OverflowError:
        return ids


class Ids:
    __slots__ = ("_ids",)

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._ids: MutableSequence[int] = _held(sorted(set(ids))) if ids else array("q")

    def __contains__(self, ident: object) -> bool:
        if not isinstance(ident, int):
            return False
        ids = self._ids
        at = bisect.bisect_left(ids, ident)
        return at < len(ids) and ids[at] == ident

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __bool__(self) -> bool:
        return bool(self._ids)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ids):
            return list(self._ids) == list(other._ids)
        if isinstance(other, set | frozenset):
            return set(self._ids) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # changes, as a set does

    def __repr__(self) -> str:
        return f"Ids({list(self._ids)!r})"

    def add(self, ident: int) -> None:
        ids = self._ids
        at = bisect.bisect_left(ids, ident)  # past the largest (a journal's order): the end
        if at < len(ids) and ids[at] == ident:
            return
        try:
            ids.insert(at, ident)
        except OverflowError:
            self._ids = [*ids[:at], ident, *ids[at:]]

    def discard(self, ident: int) -> None:
        ids = self._ids
        at = bisect.bisect_left(ids, ident)
        if at < len(ids) and ids[at] == ident:
            del ids[at]

    def update(self, ids: Iterable[int]) -> None:
        added = list(ids)
        if not added:
            return
        mine = self._ids
        if all(a < b for a, b in itertools.pairwise(added)) and (not mine or added[0] > mine[-1]):
            more = _held(added)  # past what it holds, in order (a batch, a record): appended
            if isinstance(mine, array) and isinstance(more, array):
                mine.extend(more)
            else:
                self._ids = [*mine, *more]
            return
        self._ids = _held(sorted(set(added).union(mine)))

    def difference_update(self, ids: Iterable[int]) -> None:
        if self._ids:
            gone = set(ids)
            self._ids = _held([i for i in self._ids if i not in gone])
