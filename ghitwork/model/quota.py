"""When a usage limit resets: the `reset` group of a `rate_limit_pattern` match, read as a moment.

`parse_reset(text, now)` reads what an agent CLI printed about its usage-limit reset and returns
the moment the window opens again, or None when the text cannot be read (the caller then keeps
today's rate-limit behaviour). Pure: no I/O, no clock; `now` is passed in and must be
timezone-aware, and a time printed without a zone is read in `now`'s zone (pass the local time,
e.g. `datetime.now().astimezone()`; `reset_at` does that for a POSIX timestamp).

Three kinds of text are read (case-insensitive, words such as "resets", "at", "in", "on",
"until", "try again" around them are ignored):

- a duration, counted from `now`: "2h 13m", "in 5 days", "37 seconds", "2 days 3 hours",
  "1d2h", "1 hour and 5 minutes", or a bare number of seconds ("90");
- a time of day, optionally with a date and a zone: "3pm", "15:00", "15:00:30", "3:30 PM",
  "3:30 PM (Europe/Berlin)", "3pm UTC", "tomorrow at 9am", "Dec 5, 3pm (Europe/Berlin)" (what
  Claude Code prints), "Dec 5th, 2026 3:30 PM" (what Codex prints). The zone is the printed one
  (an IANA name through zoneinfo, or UTC/GMT/Z), else `now`'s. A time of day without a date that
  has already passed today means tomorrow, except that one passed at most `GRACE` ago means now:
  the CLIs print the minute truncated and the message takes a moment to reach us, so "3:30 PM"
  read at 3:31 PM is the window that just reset, not tomorrow's. A time without seconds is the
  end of its minute (MINUTE_END: they cut the real reset to it). A date without a year is the
  next one to come (this year or next);
- an absolute timestamp: ISO 8601 ("2026-12-03T15:00:00Z", "2026-12-03 15:00:00+01:00"; without
  an offset it is read in the printed zone or `now`'s), or POSIX seconds ("1764774000", as the
  providers send `resets_at`).

What comes back is never before `now`. Anything read from prose (all but the absolute timestamps)
lying more than `MAX_AHEAD` ahead is not trusted and gives None, as does an absolute timestamp or
an explicit date already past: a misread must not close an account for weeks, and a reset that
already happened closes nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

MAX_AHEAD = timedelta(days=8)
"""The furthest a reset read from prose may lie ahead (the longest window, a week, plus a day)."""

GRACE = timedelta(minutes=1)
"""How long ago a printed time of day may have passed and still mean "now" rather than tomorrow
(SPEC §14: past means tomorrow; the minute's end is counted first, so this only covers the
moment the message takes to reach us, not a time clearly past)."""

_UNIT_SECONDS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "wk": 604800,
    "wks": 604800,
    "week": 604800,
    "weeks": 604800,
}
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        start=1,
    )
    for name in names
}
# Words that may stand around a reset without changing it ("resets at 3pm", "try again in 2h").
_FILLER = {"resets", "reset", "at", "in", "on", "until", "till", "by", "try", "again", "after"}

_ISO = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[t ](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)"
    r"(?P<offset>z|[+-]\d{2}(?::?\d{2})?)?",
    re.IGNORECASE,
)
_EPOCH = re.compile(r"\d{9,11}(?:\.\d+)?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE)
_DURATION_GLUE = re.compile(r"[\s,]*(?:and\s+)?", re.IGNORECASE)
_ZONE_PAREN = re.compile(r"\(\s*([a-z0-9_+\-/]+)\s*\)", re.IGNORECASE)
_ZONE_WORD = re.compile(r"(?<![\w/])(utc|gmt|z|[a-z_]+(?:/[a-z0-9_+\-]+)+)(?![\w/])", re.IGNORECASE)
_CLOCK = re.compile(
    r"(?<![\d:])(?P<hour>\d{1,2})(?::(?P<minute>\d{2})(?::(?P<second>\d{2}))?)?"
    r"\s*(?P<half>[ap]\.?m\.?)?(?![\w:])",
    re.IGNORECASE,
)
_DATE = re.compile(
    r"(?<![a-z])(?P<month>[a-z]{3,9})\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?"
    r"(?:\s*,?\s*(?P<year>\d{4})(?!\s*:))?(?![\d:])",
    re.IGNORECASE,
)
_RELATIVE_DAY = re.compile(r"(?<![a-z])(?P<word>today|tomorrow)(?![a-z])", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+", re.IGNORECASE)


MINUTE_END = timedelta(seconds=59)


def parse_reset(text: str, now: datetime) -> datetime | None:
    """The moment `text` says a usage limit resets (see the module docstring), or None."""
    if now.tzinfo is None:
        raise ValueError(
            "parse_reset needs a timezone-aware now (e.g. datetime.now().astimezone())"
        )
    clean = " ".join(text.split()).strip(" .;!")
    if not clean:
        return None
    absolute = _absolute(clean, now)
    if absolute is not None:
        return absolute if absolute >= now else None
    if _EPOCH.fullmatch(clean) or _ISO.search(clean):
        return None
    moment = _duration(clean, now)
    if moment is None:
        moment = _time_of_day(clean, now)
    if moment is None or moment < now or moment - now > MAX_AHEAD:
        return None
    return moment


def reset_at(text: str, now: float) -> float | None:
    """`parse_reset` for POSIX seconds: `now` is read in the machine's local zone."""
    moment = parse_reset(text, datetime.fromtimestamp(now).astimezone())
    return None if moment is None else moment.timestamp()


def _absolute(text: str, now: datetime) -> datetime | None:
    """An ISO 8601 timestamp or POSIX seconds, alone in `text` (but for a printed zone)."""
    if _EPOCH.fullmatch(text):
        return datetime.fromtimestamp(float(text), UTC)
    match = _ISO.search(text)
    if match is None:
        return None
    taken = _take_zone(_cut(text, match.start(), match.end()))
    if taken is None or not _only_filler(taken[0]):
        return None
    zone = taken[1]
    offset = (match.group("offset") or "").upper()
    if len(offset) == 3:
        offset += ":00"
    try:
        moment = datetime.fromisoformat(f"{match.group('date')}T{match.group('time')}{offset}")
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone or now.tzinfo)
    return moment


def _duration(text: str, now: datetime) -> datetime | None:
    """`now` plus a duration such as "2 days 3 hours", "1d2h", "in 37 seconds", or bare seconds."""
    body = " ".join(word for word in text.split(" ") if word.lower() not in _FILLER)
    if _NUMBER.fullmatch(body):
        total = float(body)
    else:
        total = 0.0
        pos = 0
        while pos < len(body):
            glue = _DURATION_GLUE.match(body, pos)
            pos = glue.end() if glue is not None else pos
            part = _DURATION_PART.match(body, pos)
            unit = "" if part is None else part.group(2).lower()
            if part is None or unit not in _UNIT_SECONDS:
                return None
            total += float(part.group(1)) * _UNIT_SECONDS[unit]
            pos = part.end()
        if not body:
            return None
    if total > 2 * MAX_AHEAD.total_seconds():  # never kept; and keeps timedelta in range
        return None
    return now + timedelta(seconds=total)


def _time_of_day(text: str, now: datetime) -> datetime | None:
    """A clock time, maybe with a date ("Dec 5th, 2026", "tomorrow") and a zone."""
    taken = _take_zone(text)
    if taken is None:
        return None
    rest, zone = taken
    tz = zone or now.tzinfo
    assert tz is not None
    today = now.astimezone(tz).date()

    day: date | None = None
    explicit_year = False
    date_match = next(
        (m for m in _DATE.finditer(rest) if m.group("month").lower() in _MONTHS), None
    )
    if date_match is not None:
        year = int(date_match.group("year") or today.year)
        explicit_year = date_match.group("year") is not None
        month = _MONTHS[date_match.group("month").lower()]
        try:
            day = date(year, month, int(date_match.group("day")))
        except ValueError:
            return None
        rest = _cut(rest, date_match.start(), date_match.end())
    relative = _RELATIVE_DAY.search(rest)
    if relative is not None:
        if day is not None:
            return None
        day = today + timedelta(days=1 if relative.group("word").lower() == "tomorrow" else 0)
        rest = _cut(rest, relative.start(), relative.end())

    clock = _CLOCK.search(rest)
    if clock is None or (clock.group("minute") is None and clock.group("half") is None):
        return None
    rest = _cut(rest, clock.start(), clock.end())
    if not _only_filler(rest):
        return None
    hour = int(clock.group("hour"))
    minute = int(clock.group("minute") or 0)
    second = int(clock.group("second") or 0)
    half = clock.group("half")
    if half is not None:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if half.lower().startswith("p") else 0)
    if hour > 23 or minute > 59 or second > 59:
        return None

    # A time printed to the minute (both CLIs cut the real reset to it) means the end of
    # that minute: read as its start, the window would be woken into up to 59 s early.
    late = timedelta(0) if clock.group("second") is not None else MINUTE_END

    def on(when: date) -> datetime:
        moment = datetime(when.year, when.month, when.day, hour, minute, second, tzinfo=tz)
        return moment + late

    if day is None:
        moment = on(today)
        if moment < now - GRACE:
            return on(today + timedelta(days=1))
        return max(moment, now)
    moment = on(day)
    if date_match is not None and not explicit_year and moment < now - GRACE:
        try:
            moment = on(day.replace(year=day.year + 1))
        except ValueError:
            return None
    if now - GRACE <= moment < now:
        return now
    return moment


def _take_zone(text: str) -> tuple[str, tzinfo | None] | None:
    """`text` without its printed zone, and the zone (None if none is printed); None if unknown."""
    match = _ZONE_PAREN.search(text) or _ZONE_WORD.search(text)
    if match is None:
        return text, None
    name = match.group(1)
    if name.lower() in ("utc", "gmt", "z", "etc/utc", "etc/gmt"):
        return _cut(text, match.start(), match.end()), UTC
    zone = _zone(name)
    if zone is None:
        return None
    return _cut(text, match.start(), match.end()), zone


def _zone(name: str) -> ZoneInfo | None:
    """The IANA zone `name` (as printed, else in any case), or None."""
    key = name if "/" in name else name.upper()
    key = key if _valid_key(key) else _zone_keys().get(name.lower(), "")
    try:
        return ZoneInfo(key) if key else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _valid_key(key: str) -> bool:
    try:
        ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@cache
def _zone_keys() -> dict[str, str]:
    """Every IANA key by its lowercase spelling (the zoneinfo lookup itself is case-sensitive)."""
    return {key.lower(): key for key in available_timezones()}


def _cut(text: str, start: int, end: int) -> str:
    return f"{text[:start]} {text[end:]}"


def _only_filler(text: str) -> bool:
    """Nothing but ignorable words and punctuation is left."""
    if re.search(r"\d", text):
        return False
    return all(word.lower() in _FILLER for word in _WORD.findall(text))
