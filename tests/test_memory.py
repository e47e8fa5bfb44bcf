"""system/memory.py: freed memory handed back to the system once ghit-work is quiet."""

from __future__ import annotations

from ghitwork.system import memory


def test_it_trims_once_a_tick_has_passed_without_a_change() -> None:
    calls: list[int] = []

    def recorded(pad: int) -> int:
        calls.append(pad)
        return 1

    trim = memory.Trim(recorded)
    assert not trim(1)  # the first tick: no earlier one to compare with
    assert not trim(2)  # busy: it changed since the last tick
    assert trim(2) and calls == [0]  # a whole tick without a change: trimmed
    assert not trim(2) and not trim(2)  # quiet for longer: once is enough
    assert not trim(7)
    assert trim(7) and calls == [0, 0]  # quiet again after some work: once more


def test_without_glibc_it_does_nothing() -> None:
    trim = memory.Trim(None)
    assert not trim(3) and not trim(3)


def test_glibc_malloc_trim_is_found_here() -> None:
    """This machine's libc is glibc (Debian): the real function is called, and answers."""
    assert memory._TRIM is not None
    trim = memory.Trim()
    assert not trim(5)
    assert trim(5)
