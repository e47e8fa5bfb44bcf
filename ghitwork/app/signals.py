"""The stop signals (SIGTERM, SIGINT, SIGHUP), blocked from the command's first instant
(app/entry.py says why) and released, to the handlers installed by then, once the daemon has
its own; every other command releases them at once."""

from __future__ import annotations

import signal

HELD = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def hold() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


def release() -> None:
    """Deliver what arrived while held, to the handlers installed by now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
