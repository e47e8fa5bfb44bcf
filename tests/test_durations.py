from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ghitwork.model.durations import (
    Budget,
    DurationError,
    clock_time,
    format_duration,
    parse_budget,
    parse_duration,
    parse_spend,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("1h30m", 5400),
        ("2d", 172800),
        ("250ms", 0.25),
        ("45", 45),
        (45, 45),
        (1.5, 1.5),
        ("0", 0),
        (" 5m ", 300),
        ("1h1m1s", 3661),
    ],
)
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "", "m5", "5x", "-5", True, [], "1h 30m", "5m5"])
def test_bad_durations_name_the_value_and_suggest_a_form(text: object) -> None:
    with pytest.raises(DurationError, match=r"duration|negative"):
        parse_duration(text)


def test_the_message_for_a_prose_duration_suggests_the_short_form() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration("5 minutes")
    assert str(caught.value) == '"5 minutes" is not a duration (try "5m")'


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "0.25s"), (42, "42s"), (300, "5m"), (5400, "1h30m"), (90061, "1d1h1m1s")],
)
def test_durations_format_compactly(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_budgets_parse_count_and_window() -> None:
    assert parse_budget("20/1h") == Budget(20, 3600)
    assert str(parse_budget("3/90s")) == "3/1m30s"


@pytest.mark.parametrize(
    "text", ["20 per hour", "0/1h", "x/1h", "5/", "5/0s", "5/soon", 5, "1001/1d"]
)
def test_bad_budgets_are_rejected(text: object) -> None:
    with pytest.raises(DurationError):
        parse_budget(text)


@pytest.mark.parametrize(
    ("budget", "spent", "said"),
    [
        ("5.00/1d", 1.5, ("5.00/1d", "$1.50")),
        ("0.005/1h", 0.0042, ("0.005/1h", "$0.0042")),  # under a cent: not rounded to one
        ("1/1h", 0.1 + 0.2, ("1.00/1h", "$0.30")),
    ],
)
def test_a_cost_budget_and_its_spend_are_shown_as_set(
    budget: str, spent: float, said: tuple[str, str]
) -> None:
    parsed = parse_spend(budget, tokens=False)
    assert (str(parsed), parsed.shown(spent)) == said


def test_a_moment_a_day_or_more_away_is_shown_with_its_date() -> None:
    now = datetime(2026, 12, 4, 10, 0, tzinfo=UTC).timestamp()
    assert clock_time(now + 2 * 3600, now) == "12:00:00Z"
    assert clock_time(now + 13 * 3600, now) == "23:00:00Z", "later the same day"
    assert clock_time(now + 15 * 3600, now) == "2026-12-05T01:00:00Z", "tomorrow, 15h away"
    assert clock_time(now + 5 * 86400 + 19, now) == "2026-12-09T10:00:19Z"
    late = datetime(2026, 12, 4, 23, 0, tzinfo=UTC).timestamp()
    assert clock_time(late + 2 * 3600, late) == "01:00:00Z", "2h away: its (in 2h) tells"
