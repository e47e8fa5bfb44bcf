"""Usage arithmetic: numbers as CLIs print them, sums, session deltas, prices, the ledger."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ghitwork.model.usage import (
    Charge,
    Ledger,
    Price,
    Tally,
    Usage,
    charge,
    parse_number,
    spent_since,
)

PATTERN = re.compile(
    r"in=(?P<input_tokens>[\d,_]+) cached=(?P<cached_tokens>[\d,_]+) "
    r"out=(?P<output_tokens>[\d,_]+)(?: cost=(?P<cost_usd>[\d.e-]+))?"
)


def tally(*lines: str) -> Tally:
    found = Tally()
    for line in lines:
        for match in PATTERN.finditer(line):
            found.add(match)
    return found


def session_run(ledger: Ledger, agent: str, line: str, at: float) -> Usage:
    """A run printing its session "S1"'s running totals as `line`: charged against what the
    ledger holds for the session, and applied to it. The run's own usage."""
    made = charge(agent, tally(line), "session", None, "S1", ledger.session_total(agent, "S1"), at)
    assert made is not None
    ledger.apply(made)
    return made.usage


def test_numbers_with_separators_parse_and_others_do_not() -> None:
    assert parse_number("1,234") == 1234 and parse_number("1_000_000") == 1_000_000
    assert parse_number("0.009545000000000001") == 0.009545000000000001
    assert parse_number("1e-05") == 1e-05
    assert parse_number("n/a") is None


def test_a_run_sums_every_match_and_a_session_takes_the_last() -> None:
    found = tally("in=1,000 cached=100 out=10 cost=0.5", "noise", "in=2_000 cached=0 out=20")
    assert found.reported("run") == Usage(3000, 30, 100, 0.5)
    assert found.reported("session") == Usage(2000, 20, 0, 0.5)


def test_a_pattern_that_never_matches_costs_nothing() -> None:
    assert charge("a", tally("nothing here"), "run", None, None, None, 0.0) is None


def test_a_price_gives_the_cost_when_the_cli_reports_none() -> None:
    price = Price(input=2.0, output=10.0, cached=0.5)
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000, cached_tokens=200_000)
    assert price.cost(usage) == (800_000 * 2.0 + 200_000 * 0.5 + 100_000 * 10.0) / 1e6
    assert Price(2.0, 10.0).cost(usage) == (1_000_000 * 2.0 + 100_000 * 10.0) / 1e6
    found = tally("in=1000000 cached=200000 out=100000")
    made = charge("a", found, "run", price, None, None, 0.0)
    assert made is not None and made.usage.cost_usd == 2.7
    reported = charge("a", tally("in=1 cached=0 out=1 cost=0.25"), "run", price, None, None, 0.0)
    assert reported is not None and reported.usage.cost_usd == 0.25, "the CLI's cost wins"


def test_codex_style_session_totals_are_not_counted_twice() -> None:
    ledger = Ledger()
    per_run = [
        session_run(ledger, "codex", f"in={total} cached=0 out=0", 100.0).input_tokens
        for total in (1234, 2468, 3702)
    ]
    assert per_run == [1234, 1234, 1234]
    assert ledger.agent("codex").total.input_tokens == 3702
    other = charge("codex", tally("in=50 cached=0 out=0"), "session", None, "S2", None, 100.0)
    assert other is not None and other.usage.input_tokens == 50, "a new session starts from 0"


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=30))
def test_session_deltas_are_never_negative_and_add_up_to_the_final_total(
    increments: list[int],
) -> None:
    ledger, total, seen = Ledger(), 0, []
    for step in increments:
        total += step
        seen.append(session_run(ledger, "a", f"in={total} cached=0 out={total}", 1.0))
    assert all(u.input_tokens >= 0 and u.output_tokens >= 0 for u in seen)
    assert sum(u.input_tokens for u in seen) == total


@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=20))
def test_a_session_total_minus_the_last_one_is_never_negative(totals: list[int]) -> None:
    """SPEC §9: that total minus the total last recorded, never negative (a total that went
    down grew 0)."""
    before = Usage()
    for total in totals:
        grew = Usage(total, 0, 0, 0.0).since(before)
        assert grew.input_tokens == max(0, total - before.input_tokens)
        before = Usage(total, 0, 0, 0.0)


def test_the_ledger_keeps_totals_per_agent_and_day_and_round_trips() -> None:
    ledger = Ledger()
    ledger.apply(Charge("a", 100.0, "2026-11-25", Usage(10, 1, 0, 0.5)))
    ledger.apply(
        Charge("a", 200.0, "2026-11-26", Usage(20, 2, 5, 0.25), "S", Usage(20, 2, 5, 0.25))
    )
    ledger.apply(Charge("b", 300.0, "2026-11-26", Usage(1, 1, 0, 1.0)))
    again = Ledger.from_json(ledger.to_json())
    assert again.agent("a").total == Usage(30, 3, 5, 0.75) and again.agent("a").runs == 2
    assert again.agent("a").days["2026-11-26"] == Usage(20, 2, 5, 0.25)
    assert again.session_total("a", "S") == Usage(20, 2, 5, 0.25)
    assert spent_since(again.agent("a").recent, 150.0) == (22, 0.25)
    record = Charge("a", 1.0, "2026-11-26", Usage(1, 2, 0, 0.1), "S", Usage(5, 6, 0, 0.3))
    assert Charge.from_record(record.to_record()) == record
    assert set(record.to_record()) == {
        "agent",
        "t",
        "day",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cost_usd",
        "session",
        "total",
    }, "numbers, an agent, a day and a session id: never a prompt or a token"
