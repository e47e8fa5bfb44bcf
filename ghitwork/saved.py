"""What the state dir holds, as data: the saved state, its snapshot document, and JSON.

`Saved` is rebuilt from a snapshot plus the journal's records (`apply`); store.py writes and
reads the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from ghitwork.events import Event, parse_json
from ghitwork.usage import Charge, Ledger

VERSION = 1


def dumps(data: object) -> bytes:
    """Compact JSON. orjson is several times faster than json, which a catch-up's
    compactions showed; json writes what orjson refuses (an integer past 64 bits)."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return json.dumps(data, separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    """JSON written by `dumps` (or by hand), integers of any size exact (`parse_json`)."""
    return parse_json(data)


@dataclass
class SavedAgent:
    # id -> the event object as loaded; when saving, the Event itself (written as printed)
    pending: dict[int, dict[str, Any] | Event] = field(default_factory=dict)
    inflight: set[int] = field(default_factory=set)  # handed to a run that did not finish
    session_id: str | None = None
    runs: list[float] = field(default_factory=list)  # start times, for run budgets


@dataclass
class Saved:
    cursor: int | None = None
    agents: dict[str, SavedAgent] = field(default_factory=dict)
    dead: dict[int, dict[str, Any]] = field(default_factory=dict)  # dead letter id -> record
    next_dead_letter: int = 1
    ledger: Ledger = field(default_factory=Ledger)  # token use and cost

    def agent(self, name: str) -> SavedAgent:
        return self.agents.setdefault(name, SavedAgent())

    def apply(self, record: dict[str, Any]) -> None:
        """Replay one journal record."""
        if "e" in record:
            event = record["e"]
            ident = int(event["id"])
            self.cursor = ident if self.cursor is None else max(self.cursor, ident)
            for name in record.get("to", ()):
                self.agent(name).pending[ident] = event
        elif "c" in record:
            ident = int(record["c"])
            self.cursor = ident if self.cursor is None else max(self.cursor, ident)
        elif "start" in record:
            agent = self.agent(record["start"])
            agent.inflight.update(int(i) for i in record["ids"])
            if "at" in record:
                agent.runs.append(float(record["at"]))
        elif "done" in record:
            agent = self.agent(record["done"])
            for ident in record["ids"]:
                agent.pending.pop(int(ident), None)
                agent.inflight.discard(int(ident))
        elif "session" in record:
            self.agent(record["session"]).session_id = record.get("id")
        elif "dead" in record:
            # The batch's last attempt failed: its events leave the queue as one dead letter.
            letter = record["dead"]
            ident = int(letter["id"])
            agent = self.agent(letter["agent"])
            for event in letter["events"]:
                agent.pending.pop(int(event["id"]), None)
                agent.inflight.discard(int(event["id"]))
            self.dead[ident] = letter
            self.next_dead_letter = max(self.next_dead_letter, ident + 1)
        elif "usage" in record:
            self.ledger.apply(Charge.from_record(record["usage"]))
        elif "redeliver" in record:
            letter = self.dead.pop(int(record["redeliver"]), None)
            if letter is not None:
                agent = self.agent(letter["agent"])
                for event in letter["events"]:
                    agent.pending[int(event["id"])] = event
                    agent.inflight.add(int(event["id"]))  # delivered before: `redelivered`


def encode_snapshot(saved: Saved, generation: int) -> bytes:
    """The snapshot document as JSON, its events as tail-events printed them (spliced in by
    orjson, not parsed and serialized again)."""
    try:
        return orjson.dumps(_document(saved, generation, verbatim=True), default=_verbatim)
    except TypeError:  # what orjson refuses (an integer past 64 bits): json writes it
        return dumps(_document(saved, generation, verbatim=False))


def _verbatim(obj: object) -> object:
    if isinstance(obj, Event):
        return orjson.Fragment(obj.raw) if obj.raw else obj.data
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _document(saved: Saved, generation: int, verbatim: bool) -> dict[str, Any]:
    def pending(agent: SavedAgent) -> list[Any]:
        events = (agent.pending[i] for i in sorted(agent.pending))
        return [e.data if isinstance(e, Event) and not verbatim else e for e in events]

    return {
        "version": VERSION,
        "generation": generation,
        "cursor": saved.cursor,
        "agents": {
            name: {
                "pending": pending(agent),
                "inflight": sorted(agent.inflight),
                "session_id": agent.session_id,
                "runs": agent.runs,
            }
            for name, agent in saved.agents.items()
            if agent.pending or agent.session_id or agent.runs
        },
        "dead_letters": [saved.dead[i] for i in sorted(saved.dead)],
        "next_dead_letter": saved.next_dead_letter,
        "usage": saved.ledger.to_json(),
    }


def from_snapshot(data: Any) -> tuple[Saved, int]:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError("not a ghit-work state file of version 1")
    saved = Saved(cursor=data.get("cursor"))
    for name, raw in data.get("agents", {}).items():
        saved.agents[name] = SavedAgent(
            pending={int(e["id"]): e for e in raw.get("pending", [])},
            inflight={int(i) for i in raw.get("inflight", [])},
            session_id=raw.get("session_id"),
            runs=[float(t) for t in raw.get("runs", [])],
        )
    saved.dead = {int(letter["id"]): letter for letter in data.get("dead_letters", [])}
    saved.next_dead_letter = int(data.get("next_dead_letter", 1))
    saved.ledger = Ledger.from_json(data.get("usage"))
    return saved, int(data.get("generation", 0))
