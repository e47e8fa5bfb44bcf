"""Run policy: what happens to a batch after a run, and whether a run may start now.

The dispatcher asks; this module decides (as client-go's workqueue asks its RateLimiter and
Sidekiq's processor leaves retries to JobRetry). Nothing here touches a process, a timer or a
file: each rule is a function of the agent's settings, the run's result and the clock, tested
alone.

    run ends ─► output asks a human ────────────► NeedsInput (no retry, no dead letter)
             ├► ok ─────────────────────────────► Done
             ├► stopped by the operator (`k`) ──► GiveUp (dead letter at once)
             ├► failed, says when its quota resets ► Quota(until) (the whole account waits)
             ├► failed, output says rate limit ─► Retry(same attempt, rate_limited)
             ├► failed, attempts left ──────────► Retry(attempt + 1, after backoff)
             └► failed, last attempt ───────────► GiveUp (dead letter)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec

from ghitwork.config.model import AgentConfig
from ghitwork.model.conversations import main_scope
from ghitwork.model.decisions import Decision as Decision
from ghitwork.model.decisions import Done as Done
from ghitwork.model.decisions import GiveUp as GiveUp
from ghitwork.model.decisions import NeedsInput as NeedsInput
from ghitwork.model.decisions import Quota as Quota
from ghitwork.model.decisions import Retry as Retry
from ghitwork.model.decisions import Tries as Tries
from ghitwork.model.durations import Budget, SpendBudget, format_duration
from ghitwork.model.events import Event
from ghitwork.model.results import RunResult
from ghitwork.model.usage import spent_since

MAX_BACKOFF = 600.0  # the doubling stops at 10 minutes
FIRST = Tries()  # a batch's first attempt (immutable: shared by every conversation)
MIN_RATE_LIMIT_WAIT = 1.0  # "retry in 0s" must not become a tight loop


def backoff(base: float, retries: int) -> float:
    """`base` doubled `retries` times, capped at MAX_BACKOFF (base x 2^n, like client-go's
    ItemExponentialFailureRateLimiter)."""
    if retries >= 32:  # 2**32 x any sane base is past the cap; avoid float overflow
        return MAX_BACKOFF if base > 0 else 0.0
    return float(min(MAX_BACKOFF, base * 2**retries))


def after_run(config: AgentConfig, result: RunResult, tries: Tries) -> Decision:
    """What to do with the batch of a run that ended (not one stopped by ghit-work itself)."""
    if result.needs_input and not result.operator_stopped:
        return NeedsInput(result.question)
    if result.ok:
        return Done()
    if result.operator_stopped:
        return GiveUp("stopped by the operator")
    if result.rate_limited and result.quota_until is not None:
        return Quota(result.quota_until)  # the account, not the run: no attempt used
    if result.rate_limited:
        if result.retry_after is not None:
            delay = max(MIN_RATE_LIMIT_WAIT, result.retry_after)  # as the CLI said: no cap
        else:
            delay = backoff(config.run_backoff, tries.rate_limited)
        return Retry(delay, tries.attempt, rate_limited=True)
    if tries.attempt >= config.run_attempts:
        attempts = "attempt" if config.run_attempts == 1 else "attempts"
        return GiveUp(f"{result.describe()} on the last of {config.run_attempts} {attempts}")
    return Retry(backoff(config.run_backoff, tries.attempt - 1), tries.attempt + 1, False)


def next_tries(tries: Tries, decision: Decision) -> Tries:
    """The batch's standing once `decision` is carried out."""
    if isinstance(decision, Quota):
        return tries  # no attempt used: the account waited, not the batch
    if isinstance(decision, Retry):
        return Tries(decision.attempt, tries.rate_limited + decision.rate_limited)
    return FIRST


# -- budgets: may a run start now?
class Throttle(msgspec.Struct, frozen=True):
    """No run before `until`, because of `budget` (named as the config names it)."""

    until: float
    budget: str


def run_budget_allows_at(
    budget: Budget | None, starts: Iterable[float], now: float
) -> float | None:
    """None when a run may start now under a run budget ("N/WINDOW": at most N starts in any
    rolling window); else the time at which the window allows the next start."""
    if budget is None:
        return None
    since = now - budget.window
    recent = [started for started in starts if started > since]
    if len(recent) < budget.runs:
        return None
    return recent[-budget.runs] + budget.window


def spend_allows_at(
    budget: SpendBudget | None, spent: Sequence[tuple[float, int, float]], now: float
) -> float | None:
    """None while the spend (tokens or USD) of runs that ended in the rolling window is under
    the budget; else the time at which enough of it leaves the window. Spend is known only
    when a run ends, so the run that crosses the budget is not stopped: a budget is
    overshot by at most one run."""
    if budget is None:
        return None
    since = now - budget.window
    window = [(t, tokens if budget.tokens else cost) for t, tokens, cost in spent if t > since]
    total = sum(value for _, value in window)
    if total < budget.amount:
        return None
    for moment, value in sorted(window):
        total -= value
        if total < budget.amount:
            return moment + budget.window
    return now + budget.window  # unreachable: the loop empties the window


def throttle(
    config: AgentConfig,
    starts: Iterable[float],
    spent: Sequence[tuple[float, int, float]],
    now: float,
) -> Throttle | None:
    """The budget that holds the agent back now (the one that holds it longest), if any."""
    held = []
    until = run_budget_allows_at(config.budget, starts, now)
    if until is not None:
        held.append(Throttle(until, f"budget {config.budget}"))
    for name, budget in (
        ("cost_budget", config.cost_budget),
        ("token_budget", config.token_budget),
    ):
        until = spend_allows_at(budget, spent, now)
        if until is not None and budget is not None:
            tokens, cost = spent_since(spent, now - budget.window)
            used = budget.shown(tokens if budget.tokens else cost)
            held.append(Throttle(until, f"{name} {budget} ({used} spent)"))
    return max(held, key=lambda throttle: throttle.until, default=None)


def hot_scope(
    budget: Budget | None,
    run_scopes: Iterable[tuple[float, tuple[str, ...]]],
    pending: Sequence[Event],
    now: float,
) -> str:
    """The scope that woke the agent most in its budget's window (its recent runs' scopes,
    and `pending`): where an agent-to-agent loop usually is; named in a throttle message."""
    since = now - (budget.window if budget else 0.0)
    counts: Counter[str] = Counter()
    for started, scopes in run_scopes:
        if started > since:
            counts.update(scopes)
    counts.update(main_scope(event) for event in pending)
    if not counts:
        return ""
    scope, count = counts.most_common(1)[0]
    return f"; most events from {scope} ({count} in the window)"


def describe_retry(retry: Retry, attempts: int, clock_time: str) -> str:
    """`attempt 2/3 at 12:00:30Z (in 30s)`, or for a rate limit `rate-limited: attempt 2/3
    again at ...`."""
    when = f"at {clock_time} (in {format_duration(retry.delay)})"
    if retry.rate_limited:
        return f"rate-limited: attempt {retry.attempt}/{attempts} again {when}"
    return f"attempt {retry.attempt}/{attempts} {when}"
