"""Sending (SPEC §13): a task per notify target, off the dispatch path.

Each target's task takes its oldest entry waiting in the outbox, fsyncs the outbox (on a
worker thread) so that what is sent is durable first, hands it to `send.Sender` (apprise, in
a process of its own), and retries a failed send with exponential backoff (`backoff`: 1 s,
doubling, at most 5 min) until it is delivered or the entry is a day old (EXPIRE). A target
that hangs or fails only delays its own notifications. `Delivery` is the part of
`notifier.Notifier` that does it; the notifier queues and owns the state it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from ghitwork.bus.changes import Level, StateBus
from ghitwork.config.model import Notify
from ghitwork.model.durations import format_duration
from ghitwork.model.redact import Redactor
from ghitwork.notify.outbox import Entry, Outbox, fsync_close, write_compaction
from ghitwork.notify.send import Sender
from ghitwork.observe.status import Repeats

BACKOFF = 1.0  # seconds before the first retry of a failed send; doubling
BACKOFF_CAP = 300.0
EXPIRE = 24 * 3600.0  # an entry not delivered within a day is dropped (and said)
TOPIC = "notify"


def backoff(attempts: int, base: float = BACKOFF, cap: float = BACKOFF_CAP) -> float:
    """The wait after `attempts` failed sends of one entry: base, doubling, capped."""
    return float(min(cap, base * 2.0 ** max(attempts - 1, 0)))


def describe_target(index: int, target: Notify) -> str:
    """A target as a status line names it: its table and schema (the URL is a secret)."""
    scheme = target.url.split("://", 1)[0]
    return f"notify[{index}] ({scheme}://)"


class Delivery:
    """The sending half of `notifier.Notifier`: a task per target (`_kick` starts it or
    wakes it), its backoff, and the outbox's entries left once sent (compacted when due)."""

    # Set by the notifier's __init__
    bus: StateBus
    redactor: Redactor
    sender: Sender
    clock: Callable[[], float]
    backoff_base: float
    backoff_cap: float
    outbox: Outbox
    repeats: Repeats
    targets: dict[str, tuple[int, Notify]]
    _failing: dict[str, int]
    _senders: dict[str, asyncio.Task[None]]
    _wake: dict[str, asyncio.Event]
    _compacting: bool
    _closing: bool

    def _kick(self, tid: str) -> None:
        if self._closing or tid not in self.targets:
            return
        wake = self._wake.setdefault(tid, asyncio.Event())
        wake.set()
        task = self._senders.get(tid)
        if task is None or task.done():
            self._senders[tid] = asyncio.get_running_loop().create_task(self._send_loop(tid))

    async def _send_loop(self, tid: str) -> None:
        wake = self._wake.setdefault(tid, asyncio.Event())
        loop = asyncio.get_running_loop()
        while tid in self.targets:
            entry = next(self.outbox.waiting(tid), None)
            if entry is None:
                wake.clear()
                await wake.wait()
                continue
            index, target = self.targets[tid]
            if self.clock() - entry.at > EXPIRE:
                self.repeats(
                    ("expired", tid),
                    Level.WARNING,
                    TOPIC,
                    f"dropped a {entry.cause} notification for {describe_target(index, target)}"
                    f" not delivered within {format_duration(EXPIRE)}",
                )
                self._leave(entry, "expired")
                continue
            fd = self.outbox.sync_fd()
            if fd is not None:  # written before sent: durable before anyone sees it
                with contextlib.suppress(OSError):
                    await loop.run_in_executor(None, fsync_close, fd)
            delivered, reason = await self._send(target, entry)
            if tid not in self.targets or self.targets[tid][1] is not target:
                continue  # reloaded meanwhile: looked at again
            if delivered:
                failures = self._failing.pop(tid, 0)
                self._leave(entry, "sent")
                if failures:
                    waiting = sum(1 for _ in self.outbox.waiting(tid))
                    self.bus.notice(
                        Level.INFO,
                        TOPIC,
                        f"{describe_target(index, target)} takes notifications again (after "
                        f"{failures} failed attempt(s)); {waiting} waiting",
                    )
                continue
            entry.attempts += 1
            self._failing[tid] = self._failing.get(tid, 0) + 1
            delay = backoff(entry.attempts, self.backoff_base, self.backoff_cap)
            waiting = sum(1 for _ in self.outbox.waiting(tid))
            self.repeats(
                ("send", tid),
                Level.WARNING,
                TOPIC,
                f"cannot send to {describe_target(index, target)}: {reason}; retrying in "
                f"{format_duration(delay)} ({waiting} waiting)",
            )
            await asyncio.sleep(delay)

    async def _send(self, target: Notify, entry: Entry) -> tuple[bool, str]:
        # Redacted again: a secret a reload added since it was written is not sent either.
        title, body = self.redactor.text(entry.title), self.redactor.text(entry.body)
        outcome = self.sender.start(target.url, title, body, entry.kind)
        try:
            return await asyncio.wait_for(outcome, self.sender.timeout)
        except TimeoutError:  # its thread in the worker ends by apprise's own timeouts
            return False, f"no answer within {format_duration(self.sender.timeout)}"

    def _leave(self, entry: Entry, how: str) -> None:
        try:
            self.outbox.done(entry, how)
        except OSError as error:
            self.repeats(
                ("outbox", "write"),
                Level.ERROR,
                TOPIC,
                f"cannot write the outbox {self.outbox.path}: {why(error)} (a notification "
                "sent may be sent again after a restart)",
            )
        if self.outbox.wants_compaction() and not self._compacting:
            self._compacting = True
            asyncio.get_running_loop().create_task(self._compact())

    async def _compact(self) -> None:
        try:
            data, generation = self.outbox.compacted()
            loop = asyncio.get_running_loop()
            written = await loop.run_in_executor(None, write_compaction, self.outbox.path, data)
            self.outbox.install(written, generation, data.count(b"\n"))
        except OSError as error:
            self.repeats(
                ("outbox", "compact"),
                Level.WARNING,
                TOPIC,
                f"cannot compact the outbox {self.outbox.path}: {why(error)}",
            )
        finally:
            self._compacting = False


def why(error: OSError) -> str:
    return error.strerror or str(error)
