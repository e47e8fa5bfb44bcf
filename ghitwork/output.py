"""Reading a run's output: split into lines, archived, searched for what ghit-work needs.

Each line of stdout and stderr is searched for the session id (`session_id_pattern`), for a
failed run a rate limit (`rate_limit_pattern`, with an optional `seconds` group), and token use
and cost (`usage_patterns`, usage.py). A line is
searched up to MAX_LINE bytes; a longer one is cut, never accumulated further, so a 64 MiB line
costs one copy, not a quadratic rebuild.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from ghitwork.archive import Redactor
from ghitwork.usage import Tally, parse_number

MAX_LINE = 1024 * 1024  # longest line searched or forwarded; the rest of it is skipped

OutputSink = Callable[[str, str], None]  # (stream name, line)


@dataclass(frozen=True)
class Patterns:
    """What to look for in an agent's output."""

    session_id: re.Pattern[str] | None = None
    rate_limit: re.Pattern[str] | None = None
    usage: tuple[re.Pattern[str], ...] = ()


@dataclass
class Findings:
    """What the lines of one run said, over both streams."""

    session_id: str | None = None
    rate_limited: bool = False
    retry_after: float | None = None
    tally: Tally = field(default_factory=Tally)


@dataclass
class Stream:
    """One of a run's two output streams."""

    name: str
    sink: IO[bytes] | None
    redactor: Redactor
    patterns: Patterns
    findings: Findings
    forward: OutputSink | None
    last_line: str = ""
    _partial: bytearray = field(default_factory=bytearray)
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
                seconds = match.groupdict().get("seconds")
                if seconds is not None:
                    findings.retry_after = parse_number(seconds)
        for pattern in patterns.usage:
            for match in pattern.finditer(text):
                findings.tally.add(match)
        if text.strip():
            self.last_line = self.redactor.text(text)[:500]
            if self.forward is not None:
                self.forward(self.name, self.last_line)

    def close(self) -> None:
        if self._partial:
            self._line(bytes(self._partial))
            self._partial.clear()
        if self.sink is not None:
            self.sink.write(self.redactor.flush())
            self.sink.close()
