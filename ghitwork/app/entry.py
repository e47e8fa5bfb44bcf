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

from ghitwork.app import signals


def main() -> int:
    signals.hold()
    from ghitwork.app.cli import main as run  # the heavy imports, with the signals held

    code = run()
    exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, once the command is done: freeing
    a hundred and fifty modules one by one takes ~25 ms, a few percent of a catch-up, and
    writes nothing. What the teardown would do that matters still happens: the atexit
    handlers run (logging's flush among them) and stdout and stderr are flushed. Returns
    (and the interpreter exits as usual) while another thread still runs, whose work
    would be cut off, or when a stream cannot be flushed, so its error is reported."""
    import atexit
    import os
    import sys
    import threading

    if threading.active_count() > 1:
        return
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return
    os._exit(code)
