"""The notifier (SPEC §13): a subscriber of the state bus that never delays it.

On the bus's thread (the loop's, in the dispatch path) it only reads each change as a cause
(`causes.Causes`, a dict lookup and a comparison for the changes that are no cause) and,
for the rare change that is one, writes one line per target to the outbox (`outbox.Outbox`,
a `write` without fsync: microseconds). Sending is a task per target, off the dispatch path:
it fsyncs the outbox (on a worker thread), hands the notification to apprise in a process
of its own (`send.Sender`), and retries a failed send with exponential backoff (1 s, doubling,
at most 5 min) until it is delivered, the entry is a day old, or the bound drops it. A
target that hangs or fails only delays its own notifications. The sending is
`delivery.Delivery`, which the notifier is.

What goes wrong is said in status lines of topic `notify`, each kind at most once a minute
with a count (`observe.status.Repeats`): a failed send (per target, with how many wait), the
bound dropping the oldest, the outbox that cannot be written. A notifier's own fault is
contained the same way: notifications are not worth stopping the dispatch for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from ghitwork.bus.changes import (
    AgentChanged,
    AgentPaused,
    Change,
    ConfigApplied,
    ConversationsQueued,
    DeadLettersLoaded,
    Level,
    StateBus,
)
from ghitwork.config.model import Config, Notify
from ghitwork.model.durations import format_duration
from ghitwork.model.redact import Redactor
from ghitwork.notify.causes import Causes
from ghitwork.notify.compose import Notification
from ghitwork.notify.delivery import BACKOFF, BACKOFF_CAP, TOPIC, Delivery, why
from ghitwork.notify.outbox import Entry, Outbox, target_id
from ghitwork.notify.send import Sender
from ghitwork.observe.status import Repeats

CLOSE_WAIT = 1.0  # seconds the stop gives sends under way (the rest waits for the next start)
EARLY_MOST = 10_000  # changes held until `start`
_EARLY = (DeadLettersLoaded, AgentPaused, AgentChanged, ConversationsQueued)


class Notifier(Delivery):
    """`start()` on the loop once state_dir is locked; `close()` at the stop. Subscribes
    itself to the bus at `start`, and follows each ConfigApplied (reloads)."""

    def __init__(
        self,
        config: Config,
        bus: StateBus,
        redactor: Redactor | None = None,
        *,
        causes: Causes | None = None,
        sender: Sender | None = None,
        clock: Callable[[], float] = time.time,
        backoff_base: float = BACKOFF,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self.bus = bus
        self.redactor = redactor or Redactor()
        self.causes = causes or Causes()
        self.sender = sender or Sender()
        self.clock = clock
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.outbox = Outbox(config.state_dir / "notify")
        self.repeats = Repeats(bus.notice)
        self.targets: dict[str, tuple[int, Notify]] = {}  # by target_id(url)
        self._failing: dict[str, int] = {}  # target id -> failed attempts in a row
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._due: float | None = None
        self._subscription: Any = None
        self._compacting = False
        self._closing = False
        self._apply(config)
        # What the start shows again before `start` (dead letters kept, pauses restored,
        # conversations still waiting for input): held, and read once the outbox is.
        self._early: list[Change] = []
        self._holding = bus.changes.subscribe(self._hold)

    # -- lifecycle
    def _hold(self, change: Change) -> None:
        if len(self._early) < EARLY_MOST and isinstance(change, _EARLY):
            self._early.append(change)

    def start(self) -> None:
        """Read the outbox a previous instance left, send what it holds, follow the bus."""
        try:
            self.outbox.open()
        except OSError as error:
            self.bus.notice(
                Level.ERROR,
                TOPIC,
                f"cannot read or rewrite the outbox {self.outbox.path}: {why(error)}; "
                "notifications are still sent, but not kept across a restart until it can "
                "be written",
            )
        if self.outbox.unreadable:
            self.bus.notice(
                Level.WARNING,
                TOPIC,
                f"skipped {self.outbox.unreadable} unreadable line(s) of {self.outbox.path} "
                "(a write cut short by a crash)",
            )
        self.causes.load(self.outbox.state)
        self.causes.dead_letters = self.outbox.highest("dead-letter:")
        self._retarget()
        self._holding.dispose()
        self._subscription = self.bus.changes.subscribe(self)
        early, self._early = self._early, []
        for change in early:
            self(change)
        left = len(self.outbox.pending)
        if left:
            self.bus.notice(
                Level.INFO,
                TOPIC,
                f"{left} notification(s) left in the outbox by the last run: sending them",
            )
        self.sender.warm([target.url for _, target in self.targets.values()])
        for tid in self.targets:
            self._kick(tid)

    async def close(self, wait: float = CLOSE_WAIT) -> None:
        """At the stop: give the sends under way `wait` seconds, then stop sending; what is
        not delivered stays in the outbox for the next start."""
        self._closing = True
        self._holding.dispose()
        if self._subscription is not None:
            self._subscription.dispose()
            self._subscription = None
        if self._timer is not None:
            self._timer.cancel()
        deadline = asyncio.get_running_loop().time() + wait
        while self._deliverable() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for task in self._senders.values():
            task.cancel()
        for task in list(self._senders.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._senders.clear()
        await self.sender.close()
        left = len(self.outbox.pending)
        if left:
            self.bus.notice(
                Level.INFO,
                TOPIC,
                f"{left} notification(s) not delivered yet stay in {self.outbox.path}; "
                "they are sent at the next start",
            )
        self.repeats.flush()
        self.outbox.close()

    def _deliverable(self) -> bool:
        """Something pending for a target that is not failing (its send may be under way)."""
        return any(
            entry.target in self._senders and not self._failing.get(entry.target)
            for entry in self.outbox.pending.values()
        )

    # -- the bus
    def __call__(self, change: Change) -> None:
        if isinstance(change, ConfigApplied):
            self._apply(change.config)
            self._retarget()
            for tid in self.targets:
                self._kick(tid)
            return
        if not self.targets:
            return
        try:
            found = self.causes.on(change)
            for notification in found:
                self.queue(notification)
            if self.causes.dirty:
                self._save_state()
            self._schedule()
        except Exception as error:  # contained: a notification is not worth a stop
            self._fault(error)

    def _apply(self, config: Config) -> None:
        self.targets = {
            target_id(target.url): (index, target) for index, target in enumerate(config.notify)
        }

    def _retarget(self) -> None:
        """Entries for a target no longer configured: an edited table (same place in the
        config, another URL) takes them over; a removed one drops them (said)."""
        by_index = {index: tid for tid, (index, _) in self.targets.items()}
        gone = 0
        for entry in list(self.outbox.pending.values()):
            if entry.target in self.targets:
                continue
            tid = by_index.get(entry.index)
            if tid is not None and self.targets[tid][1].wants(entry.cause, entry.agent):
                entry.target = tid
                continue
            gone += 1
            with contextlib.suppress(OSError):
                self.outbox.done(entry, "gone")
        if gone:
            self.bus.notice(
                Level.WARNING,
                TOPIC,
                f"dropped {gone} notification(s) for [[notify]] tables no longer configured",
            )

    # -- queueing (on the bus's thread: no waiting here)
    def queue(self, notification: Notification) -> int:
        """Write `notification` to the outbox once per target that wants it; how many.
        A key already seen (sent, pending or dropped) is not queued again."""
        if self.outbox.seen(notification.key):
            return 0
        title = self.redactor.text(notification.title)
        body = self.redactor.text(notification.body)
        count = 0
        for tid, (index, target) in self.targets.items():
            if not target.wants(notification.cause, notification.agent):
                continue
            entry = Entry(
                id=0,
                key=notification.key,
                target=tid,
                index=index,
                cause=notification.cause,
                title=title,
                body=body,
                kind=notification.kind,
                at=notification.at,
                agent=notification.agent,
            )
            try:
                dropped = self.outbox.add(entry)
            except OSError as error:
                dropped = []
                self.repeats(
                    ("outbox", "write"),
                    Level.ERROR,
                    TOPIC,
                    f"cannot write the outbox {self.outbox.path}: {why(error)}; "
                    f"{notification.cause} is still sent, but would not survive a crash",
                )
            for old in dropped:
                self.repeats(
                    ("outbox", "full"),
                    Level.WARNING,
                    TOPIC,
                    f"the outbox holds its most ({self.outbox.most} notifications): dropped "
                    f"the oldest ({old.cause} from {_ago(self.clock() - old.at)}); "
                    f"{self.outbox.dropped} dropped since the start",
                )
            count += 1
            self._kick(tid)
        if count:
            self.bus.notice(
                Level.DEBUG,
                TOPIC,
                f"{notification.cause} ({notification.key}) queued for {count} target(s)",
                notification.agent,
            )
        return count

    def _save_state(self) -> None:
        try:
            self.outbox.save_state(self.causes.state())
        except OSError as error:
            self.repeats(
                ("outbox", "write"),
                Level.ERROR,
                TOPIC,
                f"cannot write the outbox {self.outbox.path}: {why(error)}",
            )

    def _schedule(self) -> None:
        due = self.causes.due()
        if due == self._due or self._closing:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due = due
        if due is not None:
            delay = max(0.0, due - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer, self._due = None, None
        try:
            for notification in self.causes.tick(self.clock()):
                self.queue(notification)
            if self.causes.dirty:
                self._save_state()
            self._schedule()
        except Exception as error:
            self._fault(error)

    def _fault(self, error: Exception) -> None:
        self.repeats(
            ("fault", type(error).__name__),
            Level.ERROR,
            TOPIC,
            f"the notifier failed ({type(error).__name__}: {error}); the dispatch goes on",
        )


def _ago(seconds: float) -> str:
    return f"{format_duration(max(seconds, 0.0))} ago"
