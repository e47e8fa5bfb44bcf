"""Memory given back to the operating system once a load is over (SPEC §12's "conversations
at scale", docs/performance.md "RSS once idle").

A load of a thousand new conversations takes a few MB, and freeing it does not shrink the
process: glibc keeps the pages of its heap that lie below a block still in use (a view's
history, a cache entry made during the load), and CPython's own allocator keeps every 1 MiB
arena holding any object at all. What ghit-work can give back is glibc's: `malloc_trim(0)`
hands every free page of its heap back (MADV_DONTNEED), wherever it lies. It walks the free
blocks (2.5 ms for a 20 MB heap, 19 ms for 200 MB), so it is called once a quiet spell has
lasted QUIET, never between the events of a stream that is not quiet (a trim after every quiet
second may have cost the next event its page faults: 625a555); where there is no glibc (musl, macOS)
it does nothing.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

QUIET = 10.0  # seconds without a change before the memory freed meanwhile is given back


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # only once a load is over: start-up does not pay for it

    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def resident_mb() -> float | None:
    """This process's resident set (VmRSS), in MB of 2**20 bytes (as `ps` and the benchmarks
    count them); None where /proc does not say."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def release() -> bool:
    """Give the free pages of the C heap back; False where that cannot be done."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class Quiet:
    """Calls `release` once every quiet spell: when `version()` (the views' count of changes)
    has not moved for QUIET seconds since it last did. A change after that (a run, an event,
    the views letting idle conversations go) makes the next spell count again; whatever
    `release` itself changes (its status line) does not."""

    def __init__(
        self, version: Callable[[], int], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._current = version
        self._version = version()
        self._since = clock()
        self._given = False

    def tick(self, release: Callable[[], object] = release) -> bool:
        """At the daemon's tick: True when the memory was given back now."""
        now, version = self._clock(), self._current()
        if version != self._version:
            self._version, self._since, self._given = version, now, False
            return False
        if self._given or now - self._since < QUIET:
            return False
        self._given = True
        release()
        self._version = self._current()
        return True
