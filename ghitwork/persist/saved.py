"""What the state dir holds, as data: the saved state, its snapshot document, and JSON.

`Saved` is rebuilt from a snapshot plus the journal's records (`apply`); store.py writes and
reads the files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson

from ghitwork.model.events import Event, event_of, parse_json, routed_of
from ghitwork.model.ids import Ids
from ghitwork.model.usage import Charge, Ledger
from ghitwork.persist.lock import StateDirError
from ghitwork.persist.pending import Pending

VERSION = 1
CHUNK = 250  # queued events encoded at a time when a snapshot is written (~100 KB)


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


class SavedAgent(msgspec.Struct):
    # by id: the event object as loaded; when saving, the Event itself (written as printed)
    pending: Pending = msgspec.field(default_factory=Pending)
    inflight: Ids = msgspec.field(default_factory=Ids)  # handed to a run that did not finish
    sessions: dict[str, str] = msgspec.field(default_factory=dict)  # conversation -> session id
    runs: list[float] = msgspec.field(default_factory=list)  # start times, for run budgets
    # conversation -> (path, last used): the workspaces made for conversations (SPEC §12)
    workspaces: dict[str, tuple[str, float]] = msgspec.field(default_factory=dict)
    # SPEC §13: its pause (reason, until, by, at), and its conversations waiting for a human
    paused: dict[str, Any] | None = None
    asking: dict[str, str | None] = msgspec.field(default_factory=dict)  # conversation -> question

    @property
    def session_id(self) -> str | None:
        """The session of the agent's own conversation (the only one in agent mode)."""
        return self.sessions.get("")


class Saved(msgspec.Struct):
    cursor: int | None = None
    agents: dict[str, SavedAgent] = msgspec.field(default_factory=dict)
    dead: dict[int, dict[str, Any]] = msgspec.field(
        default_factory=dict
    )  # dead letter id -> record
    next_dead_letter: int = 1
    ledger: Ledger = msgspec.field(default_factory=Ledger)  # token use and cost
    quotas: dict[str, float] = msgspec.field(default_factory=dict)  # account -> closed until (§14)

    def agent(self, name: str) -> SavedAgent:
        found = self.agents.get(name)  # not setdefault: a SavedAgent made for each record
        if found is None:
            found = self.agents[name] = SavedAgent()
        return found

    def release(self) -> None:
        """Let go of what was loaded once it has been handed on and written again (at start):
        the queued events' tables, a few MB per 100,000 events, would otherwise be held for
        as long as the instance runs, next to the conversations holding the same events."""
        self.agents.clear()
        self.dead.clear()

    def apply_line(self, line: bytes) -> None:
        """Replay one journal line. A routed event's line (most of a journal) keeps the
        event's bytes and reads only its routing fields, as a live read does: a recovery then
        holds its queued events as compactly as the run before the crash did, not as parsed
        objects. Raises ValueError (and the like) for a line that is not a record."""
        routed = routed_of(line) if line.startswith(b'{"to":') else None
        if routed is not None:
            agents, event = routed
            self.cursor = event.id if self.cursor is None else max(self.cursor, event.id)
            for name in agents:
                self.agent(name).pending.add(event)
            return
        self.apply(loads(line))

    def apply(self, record: dict[str, Any]) -> None:
        """Replay one journal record."""
        if "e" in record:
            event = record["e"]
            ident = int(event["id"])
            self.cursor = ident if self.cursor is None else max(self.cursor, ident)
            for name in record.get("to", ()):
                self.agent(name).pending.add(event)
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
            done = [int(i) for i in record["ids"]]
            for ident in done:
                agent.pending.discard(ident)
            agent.inflight.difference_update(done)
        elif "session" in record:
            # A record from before conversations has no "conv": the agent's own conversation.
            sessions = self.agent(record["session"]).sessions
            conversation = str(record.get("conv") or "")
            sessions.pop(conversation, None)
            if record.get("id") is not None:
                sessions[conversation] = str(record["id"])
        elif "pause" in record:
            agent = self.agent(record["pause"])
            agent.paused = (
                {k: record.get(k) for k in ("until", "reason", "by", "at")}
                if record.get("on")
                else None
            )
        elif "asks" in record:
            self.agent(record["asks"]).asking[str(record.get("conv") or "")] = record.get("q")
        elif "answered" in record:
            self.agent(record["answered"]).asking.pop(str(record.get("conv") or ""), None)
        elif "quota" in record:
            until = record.get("until")
            if until is None:
                self.quotas.pop(str(record["quota"]), None)
            else:
                self.quotas[str(record["quota"])] = float(until)
        elif "ws" in record:
            workspaces = self.agent(record["ws"]).workspaces
            conversation = str(record.get("conv") or "")
            if record.get("ready"):
                workspaces[conversation] = (str(record["path"]), float(record["used"]))
            else:
                workspaces.pop(conversation, None)
        elif "dead" in record:
            # The batch's last attempt failed: its events leave the queue as one dead letter.
            letter = record["dead"]
            ident = int(letter["id"])
            agent = self.agent(letter["agent"])
            buried = [int(event["id"]) for event in letter["events"]]
            for event_id in buried:
                agent.pending.discard(event_id)
            agent.inflight.difference_update(buried)
            self.dead[ident] = letter
            self.next_dead_letter = max(self.next_dead_letter, ident + 1)
        elif "usage" in record:
            self.ledger.apply(Charge.from_record(record["usage"]))
        elif "redeliver" in record:
            letter = self.dead.pop(int(record["redeliver"]), None)
            if letter is not None:
                agent = self.agent(letter["agent"])
                for event in letter["events"]:
                    agent.pending.add(event)
                    agent.inflight.add(int(event["id"]))  # delivered before: `redelivered`


def snapshot_chunks(saved: Saved, generation: int) -> Iterator[bytes | memoryview]:
    """The snapshot document as JSON, in pieces of at most CHUNK queued events, so that it
    is written without ever being held whole (100,000 queued events are 40 MB, which one
    bytes object held at every start and compaction, twice while orjson grew it). Its events
    are spliced in as tail-events printed them, not parsed and serialized again; a piece is
    written as orjson made it, not copied (a slice and a concatenation held it three times:
    2.4 MB on top of a restart's peak with CHUNK at 2,000)."""
    yield (
        _encode({"version": VERSION, "generation": generation, "cursor": saved.cursor})[:-1]
        + b',"agents":{'
    )
    kept = [(name, agent) for name, agent in saved.agents.items() if _kept(agent)]
    for index, (name, agent) in enumerate(kept):
        yield (b"," if index else b"") + _encode(name) + b':{"pending":['
        events = agent.pending.events()
        for start in range(0, len(events), CHUNK):
            if start:
                yield b","
            yield memoryview(_encode(events[start : start + CHUNK]))[1:-1]  # no copy
        yield b"]," + _encode(_agent_fields(agent))[1:]
    yield (
        b"},"
        + _encode(
            {
                "dead_letters": [saved.dead[i] for i in sorted(saved.dead)],
                "next_dead_letter": saved.next_dead_letter,
                "usage": saved.ledger.to_json(),
                "quotas": saved.quotas,
            }
        )[1:]
    )


def _encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_verbatim)
    except TypeError:  # what orjson refuses (an integer past 64 bits): json writes it
        if isinstance(value, list):
            value = [e.data if isinstance(e, Event) else e for e in value]
        return dumps(value)


def _verbatim(obj: object) -> object:
    if isinstance(obj, Event):
        return orjson.Fragment(obj.raw) if obj.raw else obj.data
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _kept(agent: SavedAgent) -> bool:
    return bool(
        agent.pending
        or agent.sessions
        or agent.runs
        or agent.workspaces
        or agent.paused
        or agent.asking
    )


def _agent_fields(agent: SavedAgent) -> dict[str, Any]:
    """An agent's part of the snapshot, but its queued events."""
    return {
        "inflight": list(agent.inflight),
        # the agent's own conversation's, where a version without conversations reads it
        "session_id": agent.session_id,
        "sessions": {c: s for c, s in agent.sessions.items() if c},
        "runs": agent.runs,
        "workspaces": {
            c: {"path": path, "used": used} for c, (path, used) in agent.workspaces.items()
        },
        "paused": agent.paused,
        "asking": agent.asking,
    }


@functools.cache
def _pending_decoder() -> Any:
    """A snapshot whose queued events are left as bytes (msgspec.Raw), the rest parsed."""
    import msgspec

    agent = msgspec.defstruct(
        "Agent",
        [
            ("pending", list[msgspec.Raw], []),
            ("inflight", list[int], []),
            ("session_id", str | None, None),
            ("sessions", dict[str, str], {}),
            ("runs", list[float], []),
            ("workspaces", dict[str, Any], {}),
            ("paused", Any, None),
            ("asking", dict[str, Any], {}),
        ],
    )
    document = msgspec.defstruct(
        "Document",
        [
            ("version", int),
            ("generation", int, 0),
            ("cursor", int | None, None),
            ("agents", dict[str, agent], {}),  # type: ignore[valid-type]
            ("dead_letters", list[Any], []),
            ("next_dead_letter", int, 1),
            ("usage", Any, None),
            ("quotas", dict[str, float], {}),
        ],
    )
    return msgspec.json.Decoder(document)


def read_snapshot(data: bytes) -> tuple[Saved, int]:
    """A snapshot file's contents: its queued events kept as bytes (see `apply_line`); a
    document of another shape is read as plain JSON (`from_snapshot`)."""
    try:
        document = _pending_decoder().decode(data)
    except ValueError:
        return from_snapshot(loads(data))
    agents = {}
    for name, agent in document.agents.items():
        events = [event_of(bytes(raw)) for raw in agent.pending]
        if not all(isinstance(event, Event) for event in events):
            return from_snapshot(loads(data))
        agents[name] = {
            "pending": events,
            "inflight": agent.inflight,
            "session_id": agent.session_id,
            "sessions": agent.sessions,
            "runs": agent.runs,
            "workspaces": agent.workspaces,
            "paused": agent.paused,
            "asking": agent.asking,
        }
    return from_snapshot(
        {
            "version": document.version,
            "generation": document.generation,
            "cursor": document.cursor,
            "agents": agents,
            "dead_letters": document.dead_letters,
            "next_dead_letter": document.next_dead_letter,
            "usage": document.usage,
            "quotas": document.quotas,
        }
    )


def from_snapshot(data: Any) -> tuple[Saved, int]:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError("not a ghit-work state file of version 1")
    saved = Saved(cursor=data.get("cursor"))
    for name, raw in data.get("agents", {}).items():
        sessions = {str(c): str(s) for c, s in raw.get("sessions", {}).items() if s}
        if raw.get("session_id"):  # the agent's own conversation (all a version 1 file had)
            sessions[""] = str(raw["session_id"])
        saved.agents[name] = SavedAgent(
            pending=Pending(raw.get("pending", [])),
            inflight=Ids(int(i) for i in raw.get("inflight", [])),
            sessions=sessions,
            runs=[float(t) for t in raw.get("runs", [])],
            workspaces={
                str(c): (str(w["path"]), float(w["used"]))
                for c, w in raw.get("workspaces", {}).items()
            },
            paused=raw.get("paused") or None,
            asking={str(c): q for c, q in (raw.get("asking") or {}).items()},
        )
    saved.dead = {int(letter["id"]): letter for letter in data.get("dead_letters", [])}
    saved.next_dead_letter = int(data.get("next_dead_letter", 1))
    saved.ledger = Ledger.from_json(data.get("usage"))
    saved.quotas = {str(a): float(u) for a, u in (data.get("quotas") or {}).items()}
    return saved, int(data.get("generation", 0))


def peek(state_dir: Path) -> Saved:
    """What the state dir holds, read without taking the lock (for `dead-letters` and
    `redeliver`, which must work beside a running instance). A compaction between reading
    the snapshot and its journal is noticed (the journal of that generation is gone) and the
    read is done again."""
    for _ in range(20):
        snapshot = state_dir / "state.json"
        saved, generation = Saved(), 0
        try:
            if snapshot.exists():
                saved, generation = read_snapshot(snapshot.read_bytes())
            journal = state_dir / f"journal-{generation}.jsonl"
            lines = journal.read_bytes().split(b"\n") if journal.exists() else []
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            time.sleep(0.01)
            continue
        if generation and not journal.exists() and _generation(snapshot) != generation:
            continue  # compacted meanwhile
        for line in lines:
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                if line.strip():
                    saved.apply_line(line)
        return saved
    raise StateDirError(f"state_dir {state_dir}: cannot read its state (it keeps changing)")


def _generation(snapshot: Path) -> int | None:
    try:
        return int(loads(snapshot.read_bytes()).get("generation", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
