"""Process-wide settings the daemon makes once: the open files limit, the loop, the garbage
collector, and where Python's own logging goes (status lines, like everything on stderr)."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ghitwork.bus.changes import Level
from ghitwork.observe.status import Repeats, Report
from ghitwork.system import memory

GC_YOUNG = 500_000  # new container objects between collections of the youngest generation
T = TypeVar("T")


def tune_gc() -> None:
    """A catch-up keeps hundreds of thousands of young objects alive (events waiting in
    queues), and with CPython's default (a collection every 700 new containers) the cyclic
    collector cost more than decoding them; even at 50,000 it took a tenth of a catch-up's
    time, finding nothing (reference counting frees what ghit-work drops: a 100,000-event
    catch-up leaves a few hundred objects in cycles). So what start-up made is set aside for
    good, and the youngest generation is collected every GC_YOUNG new containers.
    Figures: docs/performance.md."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


def watch_children() -> None:
    """Each child's exit status is ghit-work's to read. An ignored SIGCHLD, inherited from
    whatever started ghit-work, has the kernel reap every child at once: no status is left,
    and a run that failed could not be told from one that exited 0. It is set back to the
    default. Then, on Python 3.11, asyncio's own children (tail-events) are waited for by a
    pidfd watcher in the loop instead of a thread per child (the default from 3.12 on)."""
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "PidfdChildWatcher"):
        return
    try:
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)
    except (OSError, RuntimeError, NotImplementedError):  # no pidfd_open: keep the default
        pass


def raise_open_files_limit() -> tuple[Level, str] | None:
    """The soft limit on open files up to the hard limit: a run, a state write and the HTTP side
    each need descriptors, and systemd's soft default (1024) is low for a daemon (its own
    guidance: raise it when you need more). What happened, for a status line; None when the
    soft limit already is the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or hard == resource.RLIM_INFINITY:  # unbounded: macOS; nothing to raise to
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as error:
        return Level.WARNING, f"cannot raise the open files limit from {soft} to {hard}: {error}"
    return Level.DEBUG, f"open files limit raised from {soft} to {hard} (the hard limit)"


def give_back_memory(report: Report) -> None:
    """A quiet spell after work: the C heap's free pages go back to the OS (system/memory.py),
    and a debug status line says what that did to the resident set."""
    before = memory.resident_mb()
    if memory.release() and before is not None:
        after = memory.resident_mb() or before
        report(
            Level.DEBUG,
            "memory",
            f"quiet for {memory.QUIET:g}s: free heap pages given back, "
            f"resident {before:.1f} -> {after:.1f} MB",
        )


def run(main: Coroutine[Any, Any, T], report: Report, debug: bool = False) -> T:
    """asyncio.run(main), with what Python's logging and the loop itself would print on stderr
    (aiohttp's "Error handling request" tracebacks, "Task exception was never retrieved",
    EMFILE at accept) turned into status lines by `report` (StateBus.notice), so that every
    line on stderr follows --log-format. One line each, at most once a minute for a kind that
    repeats (status.Repeats); tracebacks only with `debug` (--log-level debug), as debug lines."""
    repeats = Repeats(report)
    records = LogRecords(repeats, debug)
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(records)
    root.setLevel(records.level)
    logging.captureWarnings(True)
    try:
        with asyncio.Runner() as runner:
            records.loop = runner.get_loop()
            records.loop.set_exception_handler(loop_exceptions(repeats, debug))
            return runner.run(main)
    finally:
        repeats.flush()  # counts still waiting for their minute: before the last line
        logging.captureWarnings(False)
        root.removeHandler(records)
        root.setLevel(saved_level)


class LogRecords(logging.Handler):
    """Log records (aiohttp, asyncio, warnings) as one-line status lines: topic `http` for
    aiohttp's, `internal` for the rest; a client's bad request is a warning, not a traceback."""

    def __init__(self, repeats: Repeats, debug: bool) -> None:
        super().__init__(logging.DEBUG if debug else logging.WARNING)
        self.repeats = repeats
        self.debug = debug
        self.thread = threading.get_ident()
        self.loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level, topic, kind, message = describe_record(record)
            error = record.exc_info[1] if record.exc_info else None
            detail = traceback_lines(error) if self.debug and error is not None else ()
            loop = self.loop
            if threading.get_ident() != self.thread and loop is not None and not loop.is_closed():
                # The state bus has one owner, the loop's thread.
                loop.call_soon_threadsafe(self.repeats, kind, level, topic, message, detail)
            else:
                self.repeats(kind, level, topic, message, detail)
        except Exception:
            # The status lines are where this would be reported: there is nowhere else left
            # (and a fault of a state bus subscriber is the bus's to contain, not logging's).
            pass


def describe_record(record: logging.LogRecord) -> tuple[Level, str, tuple[object, ...], str]:
    """A record's level, topic, kind (what makes two records "the same error" for Repeats:
    the logger, the message template and the exception's type) and one-line message."""
    error = record.exc_info[1] if record.exc_info else None
    topic = "http" if record.name.split(".")[0] == "aiohttp" else "internal"
    level = _LEVELS.get(record.levelno) or (Level.ERROR if record.levelno > 40 else Level.DEBUG)
    kind = (record.name, str(record.msg), type(error).__name__)
    message = one_line(record.getMessage())
    if error is not None and type(error).__module__ == "aiohttp.http_exceptions":
        # A request aiohttp's parser refused (HTTP/9.9, a bad header): the client's fault,
        # answered 400 and contained. Not a traceback.
        remote = message.rpartition(" from ")[2] if " from " in message else "a client"
        code = getattr(error, "code", 400)
        why = one_line(str(getattr(error, "message", "") or error))
        return Level.WARNING, topic, kind, f"bad request from {remote} answered {code}: {why}"
    if error is not None:
        message += f": {exception_summary(error)}"
    return level, topic, kind, message


_LEVELS = {
    logging.DEBUG: Level.DEBUG,
    logging.INFO: Level.INFO,
    logging.WARNING: Level.WARNING,
    logging.ERROR: Level.ERROR,
    logging.CRITICAL: Level.ERROR,
}

ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def loop_exceptions(
    repeats: Repeats, debug: bool
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """The loop's exception handler: what no one awaited ("Task exception was never
    retrieved"), a callback's exception, accept() out of descriptors, as status lines."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        message = one_line(str(context.get("message") or "unhandled exception in the loop"))
        detail = traceback_lines(error) if debug and isinstance(error, BaseException) else ()
        if (
            isinstance(error, OSError)
            and error.errno in ACCEPT_ERRNOS
            and message.startswith("socket.accept()")
        ):
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            repeats(
                ("accept", error.errno),
                Level.ERROR,
                "http",
                f"cannot accept a connection: {os.strerror(error.errno or 0)} (open files "
                f"limit {soft}); new connections wait, accepting again in a second",
                detail,
            )
            return
        if isinstance(error, BaseException):
            message += f": {exception_summary(error)}"
        kind = ("loop", str(context.get("message")), type(error).__name__)
        repeats(kind, Level.ERROR, "internal", message, detail)

    return handle


def one_line(text: str, most: int = 400) -> str:
    """`text` on one line: its lines joined, aiohttp's `^` markers left out, cut at `most`."""
    parts = [part.strip() for part in text.splitlines()]
    joined = " ".join(part for part in parts if part and part.strip("^~ "))
    joined = " ".join(joined.split())
    return joined if len(joined) <= most else joined[: most - 1] + "…"


def exception_summary(error: BaseException) -> str:
    text = one_line(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def traceback_lines(error: BaseException) -> list[str]:
    """A traceback as debug lines, one per line of it (each one status line)."""
    text = "".join(traceback.format_exception(error))
    return [f"  {line}" for line in text.splitlines() if line.strip()]
