"""The one redactor: every secret ghit-work knows of is shown as `***`, on every surface.

Status lines, the TUI, `ghit-work status`, status.json, the HTTP API and page, `logdir`
archives, dead letters' error text, attention items and `problem` strings all go through one
shared `Redactor`, made in `cli.run` and refreshed at each reload (`follow`): a secret added
to an agent's `env` by a reload is redacted everywhere from then on. (What ghit-work keeps to
work with, such as a session id in the journal, is kept as is: only what is shown is redacted.)

Secrets shorter than MIN_LENGTH are ignored: redacting "ab" everywhere would hide everything
and protect nothing. Where secrets overlap (one contains another, or one ends where another
begins), everything any of them covers is one `***`, so no tail of a longer one shows.

`feed`/`flush` redact a byte stream read in chunks (an agent's output), also when a secret
straddles two chunks; each stream needs its own carry, so it takes its own `stream()`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TypeVar

MIN_LENGTH = 4
MASK = "***"
HOLD_MOST = 1 << 16  # bytes a stream may hold back while overlapping secrets keep matching

_S = TypeVar("_S", str, bytes)


def _covered(data: _S, secrets: tuple[_S, ...]) -> list[tuple[int, int]]:
    """The spans of `data` covered by any secret, merged, in order."""
    spans = []
    for secret in secrets:
        start = data.find(secret)
        while start >= 0:
            spans.append((start, start + len(secret)))
            start = data.find(secret, start + 1)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _masked(data: _S, spans: list[tuple[int, int]], mask: _S) -> _S:
    parts = []
    at = 0
    for start, end in spans:
        parts += [data[at:start], mask]
        at = end
    parts.append(data[at:])
    return data[:0].join(parts)


class Redactor:
    """Replaces the secrets it knows with `***`, in text and in byte streams."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = ()
        self.generation = 0  # grows each time the secrets change (views redact again)
        self._text: tuple[str, ...] = ()
        self._bytes: tuple[bytes, ...] = ()
        self._firsts: tuple[bytes, ...] = ()
        self._longest = 0
        self._carry = b""
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Redact these from now on (those too short are left out)."""
        long_enough = {s for s in secrets if len(s) >= MIN_LENGTH}
        kept = tuple(sorted(long_enough, key=lambda s: (-len(s), s)))
        if kept == self.secrets:
            return
        self.secrets = kept
        self.generation += 1
        # Also as they appear inside a JSON string (a status line in --log-format json).
        variants = {*kept, *(json.dumps(s, ensure_ascii=False)[1:-1] for s in kept)}
        self._text = tuple(variants)
        self._bytes = tuple({s.encode() for s in variants})
        self._firsts = tuple({s[:1] for s in self._bytes})
        self._longest = max((len(s) for s in self._bytes), default=0)

    def text(self, text: str) -> str:
        if not self._text or not any(secret in text for secret in self._text):
            return text
        return _masked(text, _covered(text, self._text), MASK)

    def data(self, data: bytes) -> bytes:
        if not self._bytes or not any(secret in data for secret in self._bytes):
            return data
        return _masked(data, _covered(data, self._bytes), MASK.encode())

    def stream(self) -> Redactor:
        """A redactor of one byte stream (its own carry), with the secrets known now."""
        return Redactor(self.secrets)

    def feed(self, chunk: bytes) -> bytes:
        """The part of the stream so far that can be shown: held back is only what may be
        the start of a secret that the next chunk completes."""
        secrets = self._bytes
        if not secrets:
            return chunk
        data = self._carry + chunk
        spans = _covered(data, secrets)
        hold = len(data)
        earliest = max(0, len(data) - self._longest + 1)
        for first in self._firsts:  # where a secret may begin that the next chunk completes
            at = data.find(first, earliest)
            while 0 <= at < hold:
                tail = data[at:]
                if any(len(s) > len(tail) and s.startswith(tail) for s in secrets):
                    hold = at
                    break
                at = data.find(first, at + 1)
        for start, end in spans:  # never cut through a span: it is masked whole
            if start < hold < end:
                hold = start
        if hold < len(data) - HOLD_MOST:  # endless overlapping matches: give up holding
            hold = len(data)
        self._carry = data[hold:]
        if not spans:
            return data[:hold]
        return _masked(data[:hold], [(s, e) for s, e in spans if e <= hold], MASK.encode())

    def flush(self) -> bytes:
        """The rest of the stream (at its end)."""
        data, self._carry = self._carry, b""
        return self.data(data)
