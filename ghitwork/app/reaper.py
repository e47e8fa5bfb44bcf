"""PID 1 duty: when ghit-work is a container's init, reap every orphan.

At PID 1, ghit-work forks. The child carries on as ghit-work; this first process only forwards
signals to it and reaps every process that ends up its child (orphans reparent to PID 1), then
exits with the child's status. This is what tini does, and it avoids racing asyncio's own
child watcher, which waits only for the processes it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType

from ghitwork.app import signals

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


def become_init_if_pid1() -> int | None:
    """None in the process that should run ghit-work; an exit status in the reaper."""
    if os.getpid() != 1:
        return None
    child = os.fork()
    if child == 0:
        return None

    def forward(sig: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    signals.release()  # the child keeps them held until its own handlers are in place
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
