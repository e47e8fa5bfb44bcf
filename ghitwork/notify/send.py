"""Sending notifications through Apprise (the `notify` extra), in a process of their own.

The only module that imports apprise (pyproject.toml's import-linter contracts), and never in
the daemon's process: `Sender` starts `python -m ghitwork.notify.send` (the worker) when there
is something to send, and talks to it over pipes, one JSON object a line. The worker imports
apprise and loads its plugins once (half a second, some 25,000 objects), and sends each
notification on a thread of its own: `Apprise.notify` blocks until the service answers, and
apprise's own socket timeouts (4 s) end a hanging request. A thread in the daemon would hold
the GIL while it builds and parses HTTP (5 to 10 ms a send), and each of the dispatch's system
calls would wait for it again: measured, a run's start took 2 to 3 ms longer while a send
was under way. A process costs the dispatch nothing, and whatever apprise or a plugin does
(hang, leak, crash) stays there: a worker that exits fails what it had under way, and the
next send starts another. It exits when its stdin closes: at the stop, or when the daemon is
killed.

What apprise logs about a failure (its warnings) is the failure's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import sys
import threading
import warnings
from typing import Any

SEND_TIMEOUT = 30.0  # seconds a send may take before it counts as failed
EXTRA = "pip install 'ghit-work[notify]'"
UNUSABLE = "apprise cannot use this URL (an unknown schema, or a part missing)"
UNSENT = "apprise could not send it"


def available() -> bool:
    """Whether apprise can be imported (the `notify` extra is installed)."""
    return importlib.util.find_spec("apprise") is not None


class Sender:
    """The daemon's side: `start` hands one notification to the worker process and answers
    a future of (delivered, why not)."""

    def __init__(self, timeout: float = SEND_TIMEOUT) -> None:
        self.timeout = timeout
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[asyncio.subprocess.Process | None] | None = None
        self._waiting: dict[int, asyncio.Future[tuple[bool, str]]] = {}
        self._next = 1
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, url: str, title: str, body: str, kind: str) -> asyncio.Future[tuple[bool, str]]:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[tuple[bool, str]] = loop.create_future()
        if not available():
            outcome.set_result((False, f"apprise is not installed ({EXTRA})"))
            return outcome
        ident, self._next = self._next, self._next + 1
        self._waiting[ident] = outcome
        request = {"id": ident, "url": url, "title": title, "body": body, "kind": kind}
        self._spawn(self._write(request))
        return outcome

    def warm(self, urls: list[str]) -> None:
        """Start the worker now and have it load apprise and the targets' plugins, so that
        the first notification does not wait for it."""
        if urls and available():
            self._spawn(self._write({"warm": urls}))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, request: dict[str, Any]) -> None:
        process = await self._worker()
        ident = request.get("id")
        if process is None or process.stdin is None:
            self._settle(ident, False, "cannot start the notification sender process")
            return
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            await process.stdin.drain()
        except (OSError, RuntimeError) as error:  # it exited meanwhile
            self._settle(ident, False, f"the notification sender process is gone ({error})")

    async def _worker(self) -> asyncio.subprocess.Process | None:
        if self._process is not None and self._process.returncode is None:
            return self._process
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._start_worker())
        return await asyncio.shield(self._starting)

    async def _start_worker(self) -> asyncio.subprocess.Process | None:
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ghitwork.notify.send",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                # It sends to the URLs it is given: ghit's token is none of its business.
                env={k: v for k, v in os.environ.items() if k != "GHIT_API_TOKEN"},
            )
        except OSError:
            return None
        self._process = process
        self._spawn(self._read(process))
        return process

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            line = await process.stdout.readline()
            if not line:
                break
            with contextlib.suppress(ValueError, KeyError, TypeError):
                answer = json.loads(line)
                self._settle(answer["id"], bool(answer["ok"]), str(answer.get("reason") or ""))
        status = await process.wait()
        if self._process is process:
            self._process = None
        for ident in list(self._waiting):  # what it had under way is not known to be sent
            self._settle(ident, False, f"the notification sender process exited ({status})")

    def _settle(self, ident: object, delivered: bool, reason: str) -> None:
        outcome = self._waiting.pop(ident, None) if isinstance(ident, int) else None
        if outcome is not None and not outcome.done():
            outcome.set_result((delivered, reason))

    async def close(self, wait: float = 1.0) -> None:
        """End the worker: its stdin closed, then SIGKILL if it has not exited in `wait`."""
        process = self._process
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), wait)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# -- the worker process (python -m ghitwork.notify.send)


class _Reasons(logging.Handler):
    """apprise's warnings and errors, kept per thread that logged them (apprise 1.x logs a
    send's failure on the thread that asked for it)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_thread: dict[int, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        lines = self.by_thread.get(record.thread or 0)
        if lines is not None:
            with contextlib.suppress(Exception):
                lines.append(" ".join(record.getMessage().split()))


class Worker:
    """One Apprise object per URL, each send on its own thread."""

    def __init__(self) -> None:
        self.reasons = _Reasons()
        logger = logging.getLogger("apprise")
        logger.addHandler(self.reasons)
        logger.propagate = False
        self._made: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._out = threading.Lock()

    def apprise(self, url: str) -> Any:
        with self._lock:
            made = self._made.get(url)
            if made is None:
                with warnings.catch_warnings():  # its plugins import deprecated modules
                    warnings.simplefilter("ignore")
                    import apprise

                    made = apprise.Apprise()
                    if not made.add(url):
                        raise ValueError(UNUSABLE)
                self._made[url] = made
            return made

    def send(self, url: str, title: str, body: str, kind: str) -> tuple[bool, str]:
        """Send now, on this thread: whether it was delivered, and why not."""
        reasons: list[str] = []
        ident = threading.get_ident()
        self.reasons.by_thread[ident] = reasons
        try:
            made = self.apprise(url)
            result = made.notify(body=body, title=title, notify_type=kind, body_format="text")
            if bool(result):
                return True, ""
            # apprise 2.x keeps each call's log (it may send on a thread of its own); 1.x
            # logs on this thread.
            logs = getattr(result, "logs", None)
            for entry in logs() if callable(logs) else ():
                if getattr(entry, "level", "") in ("WARNING", "ERROR", "CRITICAL"):
                    reasons.append(" ".join(str(getattr(entry, "message", "")).split()))
            return False, "; ".join(dict.fromkeys(r for r in reasons if r)) or UNSENT
        except Exception as error:  # whatever apprise or a plugin raises: a failed send
            reason = " ".join(str(error).split())
            return False, f"{type(error).__name__}: {reason}" if reason else type(error).__name__
        finally:
            self.reasons.by_thread.pop(ident, None)

    def answer(self, ident: object, delivered: bool, reason: str) -> None:
        line = json.dumps({"id": ident, "ok": delivered, "reason": reason}) + "\n"
        with self._out:
            sys.stdout.write(line)
            sys.stdout.flush()

    def handle(self, request: dict[str, Any]) -> None:
        if "warm" in request:
            for url in request["warm"]:
                with contextlib.suppress(Exception):
                    self.apprise(str(url))
            return
        delivered, reason = self.send(
            str(request["url"]), str(request["title"]), str(request["body"]), str(request["kind"])
        )
        self.answer(request.get("id"), delivered, reason)

    def run(self) -> None:
        for line in sys.stdin:
            try:
                request = json.loads(line)
            except ValueError:
                continue
            thread = threading.Thread(target=self._guarded, args=(request,), daemon=True)
            thread.start()
        # stdin closed: the daemon stops or is gone; sends still under way are abandoned
        # (the outbox keeps them for the next start)
        sys.stdout.flush()
        os._exit(0)

    def _guarded(self, request: dict[str, Any]) -> None:
        try:
            self.handle(request)
        except Exception as error:
            with contextlib.suppress(Exception):
                self.answer(request.get("id"), False, f"{type(error).__name__}: {error}")


def url_problem(url: str) -> str | None:
    """What is wrong with an Apprise URL (None: apprise can use it, or cannot be asked)."""
    if not available():
        return None
    try:
        with warnings.catch_warnings():  # its plugins import deprecated modules (imghdr)
            warnings.simplefilter("ignore", DeprecationWarning)
            import apprise

            if apprise.Apprise().add(url):
                return None
    except Exception as error:
        return f"apprise refuses it: {error}"
    return UNUSABLE


if __name__ == "__main__":
    Worker().run()
