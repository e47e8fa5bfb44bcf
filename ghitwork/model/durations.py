"""Durations ("90s", "5m", "1h30m", bare seconds) and run budgets ("20/1h")."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import msgspec

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_BARE = re.compile(r"\d+(?:\.\d+)?")


class DurationError(ValueError):
    """A value that is not a duration; the message says what would be."""


def parse_duration(value: object) -> float:
    """Seconds in `value`: a non-negative number, or a string such as "90s", "5m", "1h30m"."""
    if isinstance(value, bool):
        raise DurationError(f'{value!r} is not a duration (try "5m")')
    if isinstance(value, int | float):
        if value < 0:
            raise DurationError(f"{value!r} is negative; a duration is 0 or more")
        return float(value)
    if not isinstance(value, str):
        raise DurationError(f'{value!r} is not a duration (try "5m")')
    text = value.strip().lower()
    if _BARE.fullmatch(text):
        return float(text)
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise DurationError(f'"{value}" is not a duration (try "5m")')
    return total


DATED = 12 * 3600.0  # seconds from now past which a moment on another day shows its date


def clock_time(moment: float, now: float | None = None) -> str:
    """A moment as status lines show a time of day: `12:00:30Z` (UTC); with its date,
    `2026-12-09T12:00:30Z`, when it falls on another UTC day than `now` and lies DATED or
    more away (a quota window of days, a long pause), where a time of day alone would say
    the wrong day. Nearer ones on another day are told apart by the `(in ...)` beside them."""
    now = time.time() if now is None else now
    when = datetime.fromtimestamp(moment, UTC)
    day = when.date() != datetime.fromtimestamp(now, UTC).date()
    return when.strftime(
        "%Y-%m-%dT%H:%M:%SZ" if day and abs(moment - now) >= DATED else "%H:%M:%SZ"
    )


def format_duration(seconds: float) -> str:
    """Compact form: 0.25s, 42s, 5m, 1h30m, 2d3h."""
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"
    rest = round(seconds)
    if rest < 60:
        return f"{rest}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


MAX_BUDGET_RUNS = 1000  # run start times kept per agent cover any budget up to this


class Budget(msgspec.Struct, frozen=True):
    """At most `runs` invocations start in any rolling `window` seconds."""

    runs: int
    window: float

    def __str__(self) -> str:
        return f"{self.runs}/{format_duration(self.window)}"


def parse_budget(value: object) -> Budget:
    """A budget "N/DURATION" with N >= 1 and a window longer than zero."""
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    if not isinstance(value, str) or "/" not in value:
        raise DurationError(f'{shown} is not a budget (try "20/1h": 20 runs per hour)')
    count, _, window = value.partition("/")
    count = count.strip()
    if not count.isdigit():
        raise DurationError(f'"{value}" is not a budget (try "20/1h": 20 runs per hour)')
    runs = int(count)
    if runs < 1:
        raise DurationError(f'"{value}" allows no run at all; the count must be 1 or more')
    if runs > MAX_BUDGET_RUNS:
        raise DurationError(
            f'"{value}" is no guard: at most {MAX_BUDGET_RUNS} runs per window (shorten the window)'
        )
    return Budget(runs, _window(window, shown, '"20/1h": 20 runs per hour', "1h"))


def _window(text: str, shown: str, example: str, unit: str) -> float:
    """The DURATION of a budget "AMOUNT/DURATION" (`shown`, quoted), longer than zero."""
    try:
        seconds = parse_duration(text.strip())
    except DurationError:
        raise DurationError(f"{shown} is not a budget (try {example})") from None
    if seconds <= 0:
        raise DurationError(f'{shown} has an empty window; use a duration such as "{unit}"')
    return seconds


MAX_SPEND_WINDOW = 31 * 86400.0  # spend is remembered this long (usage.SPEND_HORIZON)


class SpendBudget(msgspec.Struct, frozen=True):
    """At most `amount` USD (`cost_budget`) or tokens (`token_budget`) in any rolling
    `window` seconds."""

    amount: float
    window: float
    tokens: bool  # a token budget; else USD

    def __str__(self) -> str:
        amount = f"{int(self.amount)}" if self.tokens else _usd(self.amount)
        return f"{amount}/{format_duration(self.window)}"

    def shown(self, value: float) -> str:
        return f"{int(value):,} tokens" if self.tokens else f"${_usd(value)}"


def _usd(amount: float) -> str:
    """Dollars with cents, or as many digits as an amount under a cent needs ("0.005"): a
    budget of half a cent is not shown as one of a cent."""
    return f"{amount:.2f}" if abs(amount - round(amount, 2)) < 1e-9 else f"{amount:g}"


def parse_spend(value: object, tokens: bool) -> SpendBudget:
    """A spend budget "AMOUNT/DURATION": "5.00/1d" (USD) or "2000000/1d" (tokens)."""
    example = '"2000000/1d": 2 million tokens a day' if tokens else '"5.00/1d": $5 a day'
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    if not isinstance(value, str) or "/" not in value:
        raise DurationError(f"{shown} is not a budget (try {example})")
    amount_text, _, window_text = value.partition("/")
    amount_text = amount_text.strip().lstrip("$").replace(",", "").replace("_", "")
    try:
        amount = int(amount_text) if tokens else float(amount_text)
    except ValueError:
        raise DurationError(f"{shown} is not a budget (try {example})") from None
    if not amount > 0 or amount != amount or amount == float("inf"):
        raise DurationError(f"{shown} allows nothing; the amount must be more than 0")
    seconds = _window(window_text, shown, example, "1d")
    if seconds > MAX_SPEND_WINDOW:
        raise DurationError(f"{shown}: the window is at most 31d (spend is kept that long)")
    return SpendBudget(float(amount), seconds, tokens)
