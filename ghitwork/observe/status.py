"""Status lines: one compact, greppable line per state change (text or JSON).

A subscriber of the state bus. `describe` turns a change into a `Line`; `StatusWriter` prints
the lines at or above the chosen level, with the ghit token redacted.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TextIO

import msgspec

from ghitwork.bus.changes import (
    Change,
    EventsRouted,
    Level,
)
from ghitwork.model.durations import format_duration
from ghitwork.model.redact import Redactor
from ghitwork.observe.lines import (
    LEVELS,
    Line,
    lines_of,
    only_info,
    printable,
    routed_line,
    timestamp,
)


class StatusWriter:
    """Prints status lines to `stream`; a subscriber of the state bus."""

    def __init__(
        self,
        stream: TextIO | None = None,
        level: Level = Level.INFO,
        json_format: bool = False,
        redactor: Redactor | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.threshold = LEVELS[level]
        self.json = json_format
        self.redactor = redactor or Redactor()  # the shared one (redact.py), kept current

    def enabled(self, level: Level) -> bool:
        return LEVELS[level] >= self.threshold

    def __call__(self, change: Change) -> None:
        if isinstance(change, EventsRouted):
            if self.threshold <= LEVELS[Level.DEBUG]:  # the per-event path stays cheap
                for event, agents in change.routes:
                    self._write(change.at, routed_line(event, agents))
            return
        if self.threshold > LEVELS[Level.INFO] and only_info(change):
            return
        for line in lines_of(change):
            if self.enabled(line.level):
                self._write(change.at, line)

    def _write(self, moment: float, line: Line) -> None:
        self.stream.write(self.format(moment, line) + "\n")
        self.stream.flush()

    def format(self, moment: float, line: Line) -> str:
        if self.json:
            record = {
                "time": timestamp(moment),
                "level": str(line.level),
                "event": line.event,
                **line.fields,
                "message": line.message,
            }
            text = json.dumps(record, ensure_ascii=False, default=str)
            return self.redactor.text(text)  # JSON writes control characters escaped
        text = f"{timestamp(moment)} {line.level.upper():<7} {line.message}"
        return printable(self.redactor.text(text))


REPEAT_WINDOW = 60.0  # seconds: an error that repeats gets at most one status line per window

Report = Callable[[Level, str, str], None]  # level, topic, message: StateBus.notice


class Repeats:
    """An error that can repeat (a flood of bad requests, EMFILE at every accept) as at most
    one status line per `window` for each kind: the first at once, then, when the window ends
    (or at `flush`, when the instance stops), how many more came and the latest of them.
    `report` publishes a line (StateBus.notice); `later` schedules a call (the loop's
    call_later, looked up when needed; without a running loop the count waits for `flush`)."""

    def __init__(
        self,
        report: Report,
        window: float = REPEAT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        later: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self.report = report
        self.window = window
        self.clock = clock
        self.later = later
        self._kinds: dict[Hashable, _Repeated] = {}

    def __call__(
        self, kind: Hashable, level: Level, topic: str, message: str, detail: Sequence[str] = ()
    ) -> bool:
        """Report `message` (and its `detail` lines, at debug level) unless a line of this
        kind went out less than a window ago; then count it. True when it was reported."""
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is None or (not seen.count and now - seen.since >= self.window):
            self._kinds[kind] = _Repeated(now, level, topic)
            self.report(level, topic, message)
            for line in detail:
                self.report(Level.DEBUG, topic, line)
            return True
        seen.count += 1
        seen.level, seen.latest = level, message
        if not seen.scheduled and self._schedule(seen.since + self.window - now, kind):
            seen.scheduled = True
        return False

    def _schedule(self, delay: float, kind: Hashable) -> bool:
        later = self.later
        if later is None:
            try:
                later = asyncio.get_running_loop().call_later
            except RuntimeError:  # no loop (any more): flush() reports the count
                return False
        later(max(delay, 0.0), lambda: self._flush(kind))
        return True

    def _flush(self, kind: Hashable) -> None:
        seen = self._kinds.get(kind)
        if seen is None:
            return
        seen.scheduled = False
        if not seen.count:
            return
        now = self.clock()
        plural = "" if seen.count == 1 else "s"
        self.report(
            seen.level,
            seen.topic,
            f"{seen.latest} ({seen.count} more time{plural} in the last "
            f"{format_duration(now - seen.since)})",
        )
        seen.since, seen.count = now, 0

    def flush(self) -> None:
        """Report every count still waiting for its window to end (at a stop)."""
        for kind in list(self._kinds):
            self._flush(kind)


class _Repeated(msgspec.Struct):
    since: float  # when the last line of this kind went out
    level: Level
    topic: str
    count: int = 0  # how many came since, not reported yet
    latest: str = ""
    scheduled: bool = False
