"""What the run policy decides after a run (flow/policy.py), as values the state bus
carries."""

from __future__ import annotations

import msgspec


class Done(msgspec.Struct, frozen=True):
    """The batch was handled: forget it."""


class Retry(msgspec.Struct, frozen=True):
    """Run the batch again after `delay` seconds, as attempt `attempt`."""

    delay: float
    attempt: int
    rate_limited: bool


class GiveUp(msgspec.Struct, frozen=True):
    """The batch becomes a dead letter."""

    reason: str


class NeedsInput(msgspec.Struct, frozen=True):
    """The run asked a human (SPEC §13): the batch is handled, the conversation waits for
    its next event, or `ghit-work resume`."""

    question: str | None


class Quota(msgspec.Struct, frozen=True):
    """The account's usage limit is reached until `until` (SPEC §14): the batch waits, with
    every agent of the account, and no attempt is used."""

    until: float


Decision = Done | Retry | GiveUp | NeedsInput | Quota


class Tries(msgspec.Struct, frozen=True):
    """Where a batch stands: the attempt that just ran, and how many rate-limited retries it
    has had (they do not use up attempts, but they do grow the backoff)."""

    attempt: int = 1
    rate_limited: int = 0
