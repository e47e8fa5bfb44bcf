"""The `ghit-work` command's first instant: hold the stop signals before anything else.

Importing ghit-work (reactivex, jinja2, the config) takes a few hundred milliseconds, and
until the daemon installs its handlers a SIGTERM would kill it outright: a `docker stop` or a
systemd restart in that window ended in SIGKILL with nothing saved. So the signals are
blocked here, before any heavy import: a blocked signal stays pending (even for PID 1), and
is delivered the moment the daemon has its handlers and unblocks them (`release`), which
then stops cleanly. Commands that are not the daemon release them at once, with the default
behaviour back. Children never inherit the block: nothing is started before `release`.
"""

from __future__ import annotations

import signal

HELD = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def hold() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


def release() -> None:
    """Deliver what arrived while held, to the handlers installed by now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


def main() -> int:
    hold()
    from ghitwork.cli import main as run  # the heavy imports, with the signals held

    return run()
