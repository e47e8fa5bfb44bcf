"""Ending a process group: SIGTERM, a grace period, then SIGKILL. The one terminator that
tail-events (source/tail.py), agent runs (run/invocation.py) and the leftover sweep
(system/children.py) use."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


def signal_group(pgid: int | None, sig: int) -> bool:
    """Signal a process group (0: only look); False when nothing is left in it. A group we
    may not signal is taken as still there."""
    if pgid is None:
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_group(
    pgid: int | None,
    grace: float = KILL_GRACE,
    still_wanted: Callable[[], bool] = lambda: True,
    then: Callable[[], None] = lambda: None,
) -> asyncio.TimerHandle | None:
    """SIGTERM `pgid` now and SIGKILL it `grace` seconds later on the running loop (unless
    `still_wanted()` says by then it no longer needs it), then call `then`. With nothing
    left in the group, `then` is called at once and there is no timer. Returns the timer,
    which a caller may cancel."""
    if not signal_group(pgid, signal.SIGTERM):
        then()
        return None

    def kill() -> None:
        if still_wanted():
            signal_group(pgid, signal.SIGKILL)
        then()

    return asyncio.get_running_loop().call_later(grace, kill)
