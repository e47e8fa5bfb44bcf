"""Run policy alone: backoff arithmetic and the decision after each kind of run."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace
from rxfakes import agent_config

from ghitwork.flow.policy import (
    MAX_BACKOFF,
    Done,
    GiveUp,
    Retry,
    Tries,
    after_run,
    backoff,
    next_tries,
)
from ghitwork.model.results import RunResult

OK = RunResult(agent="a", event_ids=(1,), command=("x",), started=0.0, ended=1.0, returncode=0)
FAILED = replace(OK, returncode=1)


def test_backoff_doubles_from_the_base_and_stops_at_ten_minutes() -> None:
    assert [backoff(30, n) for n in range(6)] == [30, 60, 120, 240, 480, 600]
    assert backoff(30, 100) == MAX_BACKOFF
    assert backoff(0, 5) == 0


@given(st.floats(0, 10_000), st.integers(0, 200))
def test_backoff_is_never_negative_nor_past_the_cap(base: float, retries: int) -> None:
    assert 0 <= backoff(base, retries) <= MAX_BACKOFF


def test_a_failed_run_is_retried_until_its_last_attempt_then_given_up() -> None:
    config = agent_config("a", run_attempts=3, run_backoff=10)
    first = after_run(config, FAILED, Tries(1))
    assert first == Retry(10, 2, rate_limited=False)
    second = after_run(config, FAILED, next_tries(Tries(1), first))
    assert second == Retry(20, 3, rate_limited=False)
    last = after_run(config, FAILED, Tries(3))
    assert isinstance(last, GiveUp) and last.reason == "exit 1 on the last of 3 attempts"


def test_every_kind_of_failure_is_retried() -> None:
    config = agent_config("a", run_attempts=2, run_backoff=1)
    for failed in (
        replace(OK, returncode=None, signal=9),
        replace(OK, timed_out=True),
        replace(OK, stalled=True),
        replace(OK, returncode=None, error="command not found: x"),
    ):
        assert isinstance(after_run(config, failed, Tries(1)), Retry), failed


def test_success_and_the_operators_stop() -> None:
    config = agent_config("a")
    assert after_run(config, OK, Tries(2)) == Done()
    stopped = replace(OK, returncode=None, signal=15, operator_stopped=True)
    assert after_run(config, stopped, Tries(1)) == GiveUp("stopped by the operator")
    assert next_tries(Tries(2, 4), Done()) == Tries()


def test_a_rate_limit_keeps_the_attempt_and_waits_what_it_was_told_uncapped() -> None:
    config = agent_config("a", run_attempts=1, run_backoff=5)
    told = replace(FAILED, rate_limited=True, retry_after=3600.0)
    assert after_run(config, told, Tries(1)) == Retry(3600.0, 1, rate_limited=True)
    unsaid = replace(FAILED, rate_limited=True)
    tries = Tries(1)
    delays = []
    for _ in range(10):
        decision = after_run(config, unsaid, tries)
        assert isinstance(decision, Retry) and decision.attempt == 1, "never used up"
        delays.append(decision.delay)
        tries = next_tries(tries, decision)
    assert delays[:4] == [5, 10, 20, 40] and delays[-1] == MAX_BACKOFF
