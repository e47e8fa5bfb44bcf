"""Token use and cost: what a run printed, what it spent, and the ledger of totals.

    run output ──usage_patterns──► Tally (sums, and the last value of each group)
        ──"run"────► the sums are the run's usage
        ──"session"► the last values are the session's running total; the run's usage is its
                     growth since the session's previous run (Codex prints totals like that)
        ──price────► cost, when the CLI reports none
        ──► Charge (one per run, journaled) ──► Ledger: per agent all-time and per day, per
                                                session the last total, recent spend (budgets)

A Charge is applied the same way live and when the journal is replayed, so totals survive
restarts and kill -9 exactly: a journal line is applied once or, torn, not at all. Only
numbers, an agent name, a session id and a day are stored: never a prompt, never a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import msgspec
from msgspec.structs import replace

GROUPS = ("input_tokens", "output_tokens", "cached_tokens", "cost_usd")
SPEND_HORIZON = 31 * 86400.0  # spend budgets look back at most this far
MAX_SESSIONS = 1000  # session totals kept per agent (the most recent)
MAX_DAYS = 400  # per-day totals kept per agent
MAX_CONVERSATIONS = 10_000  # per-conversation totals kept per agent (the most recent)
_SEPARATORS = str.maketrans("", "", ",_")


def parse_number(text: str) -> float | None:
    """A number as CLIs print them: `1234`, `1,234`, `1_234`, `0.0095`, `1e-05`."""
    try:
        return float(text.strip().translate(_SEPARATORS))
    except ValueError:
        return None


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int = 0  # cached ones included
    output_tokens: int = 0
    cached_tokens: int = 0  # the part of input_tokens served from a cache
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        """What a token budget counts: input + output."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cost_usd + other.cost_usd,
        )

    def since(self, before: Usage) -> Usage:
        """The growth of a running total since `before`, group by group: this total minus
        the one last recorded, never negative (SPEC §9): a group that went down grew 0."""
        return Usage(
            max(0, self.input_tokens - before.input_tokens),
            max(0, self.output_tokens - before.output_tokens),
            max(0, self.cached_tokens - before.cached_tokens),
            max(0.0, self.cost_usd - before.cost_usd),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": round(self.cost_usd, 9),
        }

    @classmethod
    def from_json(cls, data: Any) -> Usage:
        if not isinstance(data, dict):
            return cls()
        return cls(
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
            int(data.get("cached_tokens", 0)),
            float(data.get("cost_usd", 0.0)),
        )

    def describe(self) -> str:
        """`1,234 in (200 cached), 56 out, $0.0095`."""
        text = f"{self.input_tokens:,} in"
        if self.cached_tokens:
            text += f" ({self.cached_tokens:,} cached)"
        return f"{text}, {self.output_tokens:,} out, ${self.cost_usd:.4f}"


NO_USAGE = Usage()


class Price(msgspec.Struct, frozen=True):
    """USD per million tokens."""

    input: float
    output: float
    cached: float | None = None

    def cost(self, usage: Usage) -> float:
        cached = min(usage.cached_tokens, usage.input_tokens)
        fresh = usage.input_tokens - cached
        cached_price = self.input if self.cached is None else self.cached
        return (
            fresh * self.input + cached * cached_price + usage.output_tokens * self.output
        ) / 1e6


class Tally(msgspec.Struct):
    """What the usage patterns matched in one run's output."""

    sums: dict[str, float] = msgspec.field(default_factory=dict)
    lasts: dict[str, float] = msgspec.field(default_factory=dict)

    def add(self, match: re.Match[str]) -> None:
        for name, text in match.groupdict().items():
            if text is None or name not in GROUPS:
                continue
            value = parse_number(text)
            if value is None:
                continue
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.lasts[name] = value

    @property
    def found(self) -> bool:
        return bool(self.sums)

    def reported(self, totals: str) -> Usage:
        """What the output said: the sums (`run`), or the session's total so far (`session`)."""
        values = self.lasts if totals == "session" else self.sums
        return Usage(
            int(values.get("input_tokens", 0)),
            int(values.get("output_tokens", 0)),
            int(values.get("cached_tokens", 0)),
            values.get("cost_usd", 0.0),
        )

    @property
    def has_cost(self) -> bool:
        return "cost_usd" in self.sums


class Charge(msgspec.Struct, frozen=True):
    """One run's usage as the ledger keeps it (a journal record)."""

    agent: str
    time: float  # when the run ended
    day: str  # its calendar day in the instance's time zone
    usage: Usage
    session: str | None = None  # with usage_totals = "session": the session and its new total
    total: Usage | None = None
    conversation: str = ""  # SPEC §12: usage is kept per conversation too

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "agent": self.agent,
            "t": round(self.time, 3),
            "day": self.day,
            **self.usage.to_json(),
        }
        if self.session is not None and self.total is not None:
            record["session"] = self.session
            record["total"] = self.total.to_json()
        if self.conversation:
            record["conv"] = self.conversation
        return record

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Charge:
        total = data.get("total")
        return cls(
            agent=str(data["agent"]),
            time=float(data["t"]),
            day=str(data["day"]),
            usage=Usage.from_json(data),
            session=data.get("session"),
            total=Usage.from_json(total) if total is not None else None,
            conversation=str(data.get("conv") or ""),
        )


def day_of(moment: float) -> str:
    return datetime.fromtimestamp(moment).date().isoformat()


def charge(
    agent: str,
    tally: Tally,
    totals: str,
    price: Price | None,
    session: str | None,
    before: Usage | None,
    ended: float,
) -> Charge | None:
    """A run's usage from what its output said; None when nothing matched."""
    if not tally.found:
        return None
    reported = tally.reported(totals)
    usage = reported
    total = None
    if totals == "session":
        usage = reported.since(before or Usage())
        total = reported
    if not tally.has_cost and price is not None:
        usage = Usage(
            usage.input_tokens, usage.output_tokens, usage.cached_tokens, price.cost(usage)
        )
    return Charge(agent, ended, day_of(ended), usage, session if total else None, total)


class Pricing(msgspec.Struct, frozen=True):
    """How a run's usage is reckoned (SPEC §9), as values taken when the run starts: the
    run computes its own charge from them, and the flow applies it to the ledger once."""

    totals: str = "run"
    price: Price | None = None
    sessions: Mapping[str, Usage] = msgspec.field(
        default_factory=dict
    )  # the agent's session totals
    resumed: str | None = None  # the session the run resumes, if any
    conversation: str = ""

    def charge(self, agent: str, tally: Tally, printed: str | None, ended: float) -> Charge | None:
        """The run's charge: for a session's running totals, against the total recorded for
        the session it printed (or the one it resumed)."""
        session = printed or self.resumed
        before = self.sessions.get(session) if session is not None else None
        found = charge(agent, tally, self.totals, self.price, session, before, ended)
        if found is None or not self.conversation:
            return found
        return replace(found, conversation=self.conversation)


class AgentLedger(msgspec.Struct):
    total: Usage = Usage()
    runs: int = 0
    days: dict[str, Usage] = msgspec.field(default_factory=dict)
    sessions: dict[str, Usage] = msgspec.field(
        default_factory=dict
    )  # insertion order: oldest first
    recent: list[tuple[float, int, float]] = msgspec.field(
        default_factory=list
    )  # (time, tokens, USD)
    conversations: dict[str, Usage] = msgspec.field(default_factory=dict)  # most recently used last

    def today(self, now: float) -> Usage:
        return self.days.get(day_of(now), Usage())


class Ledger:
    """Per agent totals, kept in state_dir (journaled Charges, snapshotted)."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentLedger] = {}

    def agent(self, name: str) -> AgentLedger:
        ledger = self.agents.get(name)
        if ledger is None:
            ledger = self.agents[name] = AgentLedger()
        return ledger

    def recent(self, agent: str) -> list[tuple[float, int, float]]:
        """(end time, tokens, USD) of the agent's recent runs, for spend budgets."""
        ledger = self.agents.get(agent)
        return ledger.recent if ledger is not None else []

    def sessions_of(self, agent: str) -> Mapping[str, Usage]:
        """The agent's session totals so far (a copy: a run reckons against it)."""
        ledger = self.agents.get(agent)
        return dict(ledger.sessions) if ledger is not None else {}

    def session_total(self, agent: str, session: str | None) -> Usage | None:
        if session is None or agent not in self.agents:
            return None
        return self.agents[agent].sessions.get(session)

    def apply(self, charge: Charge) -> None:
        ledger = self.agent(charge.agent)
        ledger.total += charge.usage
        ledger.runs += 1
        ledger.days[charge.day] = ledger.days.get(charge.day, Usage()) + charge.usage
        if len(ledger.days) > MAX_DAYS:
            for day in sorted(ledger.days)[: len(ledger.days) - MAX_DAYS]:
                del ledger.days[day]
        if charge.session is not None and charge.total is not None:
            ledger.sessions.pop(charge.session, None)
            ledger.sessions[charge.session] = charge.total
            while len(ledger.sessions) > MAX_SESSIONS:
                del ledger.sessions[next(iter(ledger.sessions))]
        conversations = ledger.conversations
        conversations[charge.conversation] = (
            conversations.pop(charge.conversation, NO_USAGE) + charge.usage
        )
        while len(conversations) > MAX_CONVERSATIONS:
            del conversations[next(iter(conversations))]
        ledger.recent.append((charge.time, charge.usage.tokens, charge.usage.cost_usd))
        horizon = charge.time - SPEND_HORIZON
        if ledger.recent[0][0] < horizon:
            ledger.recent = [entry for entry in ledger.recent if entry[0] >= horizon]

    def to_json(self) -> dict[str, Any]:
        return {
            name: {
                "total": ledger.total.to_json(),
                "runs": ledger.runs,
                "days": {day: usage.to_json() for day, usage in ledger.days.items()},
                "sessions": {sid: usage.to_json() for sid, usage in ledger.sessions.items()},
                "recent": [
                    [round(t, 3), tokens, round(cost, 9)] for t, tokens, cost in ledger.recent
                ],
                "conversations": {c: usage.to_json() for c, usage in ledger.conversations.items()},
            }
            for name, ledger in self.agents.items()
        }

    @classmethod
    def from_json(cls, data: Any) -> Ledger:
        ledger = cls()
        if not isinstance(data, dict):
            return ledger
        for name, raw in data.items():
            ledger.agents[name] = AgentLedger(
                total=Usage.from_json(raw.get("total")),
                runs=int(raw.get("runs", 0)),
                days={day: Usage.from_json(u) for day, u in raw.get("days", {}).items()},
                sessions={sid: Usage.from_json(u) for sid, u in raw.get("sessions", {}).items()},
                recent=[(float(t), int(n), float(c)) for t, n, c in raw.get("recent", [])],
                conversations={
                    c: Usage.from_json(u) for c, u in raw.get("conversations", {}).items()
                },
            )
        return ledger


def spent_since(recent: Iterable[tuple[float, int, float]], since: float) -> tuple[int, float]:
    """Tokens and USD spent by runs that ended after `since`."""
    tokens, cost = 0, 0.0
    for moment, used, paid in recent:
        if moment > since:
            tokens += used
            cost += paid
    return tokens, cost
