"""Reading a run's output: split into lines, archived, searched for what ghit-work needs.

Each line of stdout and stderr is searched for the session id (`session_id_pattern`), for a
failed run a rate limit (`rate_limit_pattern`, with an optional `seconds` group), a question
for a human (`needs_input_pattern`, with an optional `question` group), and token use and cost
(`usage_patterns`, usage.py). A line is
searched up to MAX_LINE bytes; a longer one is cut, never accumulated further, so a 64 MiB line
costs one copy, not a quadratic rebuild.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import IO

import msgspec

from ghitwork.model.usage import Tally, parse_number
from ghitwork.run.archive import Redactor

MAX_LINE = 1024 * 1024  # longest line searched or forwarded; the rest of it is skipped

OutputSink = Callable[[str, str], None]  # (stream name, line)


class Patterns(msgspec.Struct, frozen=True):
    """What to look for in an agent's output."""

    session_id: re.Pattern[str] | None = None
    rate_limit: re.Pattern[str] | None = None
    usage: tuple[re.Pattern[str], ...] = ()
    needs_input: re.Pattern[str] | None = None


class Findings(msgspec.Struct):
    """What the lines of one run said, over both streams."""

    session_id: str | None = None
    rate_limited: bool = False
    retry_after: float | None = None
    tally: Tally = msgspec.field(default_factory=Tally)
    needs_input: bool = False
    question: str | None = None  # the last match's `question` group (redacted)
    reset: str | None = None  # the rate limit's `reset` group: when the usage limit resets
    reset_read: float | None = None  # when that line was read: "in 2h", "3pm" count from it
    limit_line: str = ""  # the line the rate limit was read from (redacted)


class Stream(msgspec.Struct):
    """One of a run's two output streams."""

    name: str
    sink: IO[bytes] | None
    redactor: Redactor
    patterns: Patterns
    findings: Findings
    forward: OutputSink | None
    last_line: str = ""
    _partial: bytearray = msgspec.field(default_factory=bytearray)
    _overlong: bool = False  # the current line passed MAX_LINE: the rest of it is skipped

    def chunk(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.write(self.redactor.feed(data))
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data, start, len(data))
                return
            self._keep(data, start, end)
            self._line(bytes(self._partial))
            self._partial.clear()
            self._overlong = False
            start = end + 1

    def _keep(self, data: bytes, start: int, end: int) -> None:
        if self._overlong or start == end:
            return
        room = MAX_LINE - len(self._partial)
        if end - start > room:
            end = start + room
            self._overlong = True
        self._partial += data[start:end]

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        patterns, findings = self.patterns, self.findings
        if patterns.session_id is not None:
            match = patterns.session_id.search(text)
            if match:
                found = match.groupdict().get("session_id") or match.group(1)
                if found:
                    findings.session_id = found
        if patterns.rate_limit is not None:
            match = patterns.rate_limit.search(text)
            if match:
                findings.rate_limited = True
                groups = match.groupdict()
                seconds = groups.get("seconds")
                if seconds is not None:
                    findings.retry_after = parse_number(seconds)
                reset = groups.get("reset")
                if reset is not None and reset.strip():
                    findings.reset = reset.strip()[:200]
                    findings.reset_read = time.time()
                    findings.limit_line = self.redactor.text(text.strip())[:300]
        if patterns.needs_input is not None:
            match = patterns.needs_input.search(text)
            if match:
                findings.needs_input = True
                question = match.groupdict().get("question")
                if question is not None and question.strip():
                    findings.question = self.redactor.text(question.strip())[:500]
        for pattern in patterns.usage:
            for match in pattern.finditer(text):
                findings.tally.add(match)
        if text.strip():
            self.last_line = self.redactor.text(text)[:500]
            if self.forward is not None:
                self.forward(self.name, self.last_line)

    def close(self) -> None:
        """The last, unfinished line is searched and the sink closed (even when that
        raises: the first exception is raised once the file is closed)."""
        try:
            if self._partial:
                partial = bytes(self._partial)
                self._partial.clear()
                self._line(partial)
            if self.sink is not None:
                self.sink.write(self.redactor.flush())
        finally:
            if self.sink is not None:
                sink, self.sink = self.sink, None
                sink.close()
