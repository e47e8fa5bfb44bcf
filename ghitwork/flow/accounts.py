"""Quota windows (SPEC §14): a usage limit closes an account, not a run.

When a run's output says its account's limit is reached and when it resets, every agent of
that `account` (or the agent alone, without one) waits in `quota` until then, plus a little
jitter so that a fleet does not wake all at once onto a window that opened a moment late. No
run starts, events keep batching, no attempt is used. The account's window is kept in
state_dir (journaled from `QuotaChanged`), so it survives restarts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

from ghitwork.bus.changes import Change, QuotaChanged

# Seconds added to a reset, at random within these: enough that an account's agents do not
# all wake onto a window that opened a moment late (clocks differ by well under a second
# with NTP), and close to the time printed (SPEC §14: "until then").
JITTER = (1.0, 3.0)

Schedule = Callable[[float, Callable[[], None]], Callable[[], None]]
Run = tuple[str, tuple[int, ...]]  # the run that hit the limit: its conversation and batch
NO_RUN: Run = ("", ())


class Accounts:
    """The accounts whose usage limit is reached, and until when."""

    def __init__(
        self,
        publish: Callable[[Change], None],
        members: Callable[[str], Iterable[str]],
        schedule: Schedule,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = lambda: random.uniform(*JITTER),
    ) -> None:
        self.publish = publish
        self.members = members  # the agents of an account, now
        self.clock = clock
        self.schedule = schedule
        self.jitter = jitter
        self.closed: dict[str, float] = {}  # account -> until (jitter included)
        self._timers: dict[str, Callable[[], None]] = {}

    def until(self, account: str) -> float | None:
        """Until when `account` is closed, or None."""
        until = self.closed.get(account)
        return until if until is not None and until > self.clock() else None

    def close(
        self, account: str, reset: float, agent: str = "", reason: str = "", run: Run = NO_RUN
    ) -> float:
        """`agent`'s run (`run`: its conversation and batch) said `account`'s limit resets at
        `reset`: closed until then (plus jitter); a later reset of an account closed already
        moves it later, never sooner. Returns until when it is closed."""
        current = self.until(account)
        until = reset + self.jitter()
        if current is not None and current >= reset:
            return current
        self._set(account, until, agent, reason, run=run)
        return until

    def restore(self, account: str, until: float) -> None:
        """A window kept in state_dir; over already, it is forgotten."""
        if until > self.clock():
            self._set(account, until, restored=True)

    def _set(
        self,
        account: str,
        until: float,
        agent: str = "",
        reason: str = "",
        restored: bool = False,
        run: Run = NO_RUN,
    ) -> None:
        self.closed[account] = until
        cancel = self._timers.pop(account, None)
        if cancel is not None:
            cancel()
        delay = max(0.0, until - self.clock())
        self._timers[account] = self.schedule(delay, lambda: self._opened(account, until))
        self.publish(
            QuotaChanged(
                account=account,
                until=until,
                agents=tuple(self.members(account)),
                agent=agent,
                reason=reason,
                restored=restored,
                conversation=run[0],
                event_ids=run[1],
            )
        )

    def _opened(self, account: str, until: float) -> None:
        self._timers.pop(account, None)
        if self.closed.get(account) != until:
            return
        del self.closed[account]
        self.publish(QuotaChanged(account=account, until=None, agents=tuple(self.members(account))))

    def cancel_timers(self) -> None:
        for cancel in self._timers.values():
            cancel()
        self._timers.clear()
