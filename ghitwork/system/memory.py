"""Giving memory back to the system once ghit-work is quiet.

CPython hands what it frees to the C allocator, and glibc keeps freed pages inside its heap
for the next allocation. `malloc_trim(0)` returns every whole free page (docs/performance.md:
about 0.4 MB once a load of 1,000 conversations has gone idle, in 0.2 ms). What CPython's own
allocator keeps (its 1 MiB arenas) is not the C allocator's to return. Where there is no glibc
(musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _trimmer() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_TRIM = _trimmer()


class Trim:
    """Called once a second (the daemon's tick) with a number that changes whenever ghit-work
    does something (the dashboard model's version): trims once when it has stayed the same for
    a whole tick, so a busy ghit-work never pays for it and a quiet one pays once."""

    def __init__(self, trim: Callable[[int], int] | None = _TRIM) -> None:
        self._trim = trim
        self._seen = -1
        self._trimmed = -1

    def __call__(self, version: int) -> bool:
        """Whether it trimmed now."""
        seen, self._seen = self._seen, version
        if self._trim is None or version != seen or version == self._trimmed:
            return False
        self._trimmed = version
        self._trim(0)
        return True
