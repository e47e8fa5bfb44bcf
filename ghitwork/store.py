"""The durable state dir: a snapshot plus an append-only journal, and a lock.

    state_dir/lock                 flock held by the running ghit-work (its pid inside)
    state_dir/state.json           snapshot: generation, cursor, per agent pending events,
                                   in-flight ids, session id, recent run times
    state_dir/journal-G.jsonl      records since snapshot generation G, one JSON per line
    state_dir/children             process groups started (children.py)
    state_dir/requests/            redelivery requests (deadletters.py)

The journal is a write-ahead log in stream order: an event is journaled (with the agents it
was routed to) before any run can take it, so the cursor, derived from the journal, never
moves past an event that is not saved. Records are buffered and written in groups: once per
burst read from tail-events, and at every batch start and end (each with one fsync). The
snapshot is rewritten (temp file, fsync, rename) when the journal has grown past twice its
size, at start and at a clean stop; then a new journal generation begins.

Loading tolerates a torn last line (a crash mid-write). Anything else unreadable is reported,
renamed aside (`*.corrupt-TIMESTAMP`), and never fatal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ghitwork.state import Route
from ghitwork.usage import Charge, Ledger

VERSION = 1
MIN_COMPACT_BYTES = 16 * 1024 * 1024


def dumps(data: object) -> bytes:
    """Compact JSON. orjson is several times faster than json, which a catch-up's
    compactions showed; json writes what orjson refuses (an integer past 64 bits)."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return json.dumps(data, separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    """JSON written by `dumps` (or by hand): orjson, and json for what it refuses."""
    try:
        return orjson.loads(data)
    except ValueError:
        return json.loads(data)


class StateDirError(Exception):
    """The state dir cannot be used at all (not writable, or locked by another ghit-work)."""


@dataclass
class SavedAgent:
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> event object
    raw: dict[int, bytes] = field(default_factory=dict)  # id -> the event as printed, if known
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


def _snapshot(saved: Saved, generation: int, verbatim: bool = True) -> dict[str, Any]:
    """The snapshot document; `verbatim`: events as tail-events printed them, when known
    (spliced into the output by orjson, not serialized again)."""

    def pending(agent: SavedAgent) -> list[Any]:
        raw = agent.raw if verbatim else {}
        return [
            orjson.Fragment(raw[i]) if i in raw else agent.pending[i] for i in sorted(agent.pending)
        ]

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


def _from_snapshot(data: Any) -> tuple[Saved, int]:
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
                saved, generation = _from_snapshot(loads(snapshot.read_bytes()))
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
                    saved.apply(loads(line))
        return saved
    raise StateDirError(f"state_dir {state_dir}: cannot read its state (it keeps changing)")


def _generation(snapshot: Path) -> int | None:
    try:
        return int(loads(snapshot.read_bytes()).get("generation", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def running_pid(state_dir: Path) -> int | None:
    """The pid of the ghit-work running on `state_dir`, or None. Read from the pid it writes
    in its lock file and checked against the live process, without touching the lock (even a
    brief flock could make a starting instance refuse)."""
    try:
        pid = int((state_dir / "lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc: a live pid is the best evidence there is
    if stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X"):
        return None  # exited, not reaped yet
    return pid if b"ghit-work" in cmdline or b"ghitwork" in cmdline else None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    def __init__(self, state_dir: Path, report: Callable[[str, str], None]) -> None:
        """`report(level, message)` tells the operator what happened to the files."""
        self.dir = state_dir
        self.report = report
        self.generation = 0
        self.snapshot_bytes = 0
        self.journal_bytes = 0
        self._journal: IO[bytes] | None = None
        self._lock: IO[str] | None = None
        self._buffer: list[bytes] = []
        self._unsynced = False
        self._agents_json: dict[tuple[str, ...], bytes] = {}

    # -- opening
    def open(self) -> Saved:
        """Take the lock, load what the last run left, and start a new snapshot generation."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.dir / "lock", "a+")  # noqa: SIM115 held until close()
        except OSError as error:
            raise StateDirError(
                f"state_dir {self.dir}: cannot use it: {error.strerror or error}"
            ) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise StateDirError(
                f"state_dir {self.dir} is in use by another ghit-work (pid {holder}); "
                "stop it first, or give this one its own state_dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock
        saved = self._load()
        return saved

    def _load(self) -> Saved:
        saved, generation = Saved(), 0
        snapshot = self.dir / "state.json"
        if snapshot.exists():
            try:
                saved, generation = _from_snapshot(loads(snapshot.read_bytes()))
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
                self._set_aside(snapshot, f"unreadable ({_reason(error)})")
                saved, generation = Saved(), 0
        for journal in sorted(self.dir.glob("journal-*.jsonl")):
            if journal.name == f"journal-{generation}.jsonl":
                self._replay(journal, saved)
            else:
                with contextlib.suppress(OSError):
                    journal.unlink()  # a generation already folded into the snapshot
        self.generation = generation
        return saved

    def _replay(self, journal: Path, saved: Saved) -> None:
        try:
            lines = journal.read_bytes().split(b"\n")
        except OSError as error:
            self._set_aside(journal, f"unreadable ({_reason(error)})")
            return
        bad = 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                saved.apply(loads(line))
            except (ValueError, TypeError, KeyError, AttributeError):
                if number == len(lines):
                    self.report(
                        "info", f"{journal}: ignored a torn last record (a crash mid-write)"
                    )
                    continue
                bad += 1
        if bad:
            self._set_aside(
                journal, f"{bad} unreadable record(s) skipped, the rest recovered", copy=True
            )

    def _set_aside(self, path: Path, why: str, copy: bool = False) -> None:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            if copy:
                aside.write_bytes(path.read_bytes())
            else:
                path.rename(aside)
            where = f"kept as {aside}"
        except OSError as error:
            where = f"could not be set aside: {_reason(error)}"
        self.report("warning", f"{path}: {why}; {where}")

    # -- writing
    def record(self, record: dict[str, Any]) -> None:
        self._buffer.append(dumps(record) + b"\n")

    def record_events(self, routes: Iterable[Route]) -> int | None:
        """Routed events, each journaled with its agents and the bytes tail-events printed
        (events no agent wants are not); returns the id of the last one journaled."""
        prefixes = self._agents_json
        append = self._buffer.append
        last = None
        for event, agents in routes:
            if not agents:
                continue
            prefix = prefixes.get(agents)
            if prefix is None:
                prefix = prefixes[agents] = b'{"to":' + dumps(list(agents)) + b',"e":'
            raw = event.raw or dumps(event.data)
            if b"\n" in raw:
                raw = raw.replace(b"\n", b" ")  # pretty-printed: newlines are only whitespace
            append(prefix + raw + b"}\n")
            last = event.id
        return last

    @property
    def dirty(self) -> bool:
        return bool(self._buffer)

    def flush(self, sync: bool = True) -> None:
        """One write for everything recorded since the last flush, and an fsync unless the
        caller syncs later (`sync()`): the journal is ordered, so a late fsync only means a
        crash replays a little more from tail-events, never that an event is skipped."""
        if self._journal is None:
            return
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._journal.write(data)
            self._journal.flush()
            self.journal_bytes += len(data)
            self._unsynced = True
        if sync:
            self.sync()

    def sync(self) -> None:
        if self._unsynced and self._journal is not None:
            os.fsync(self._journal.fileno())
            self._unsynced = False

    def sync_later(self) -> Callable[[], None] | None:
        """Take the pending fsync out of the store: a function to run off the event loop
        (an fsync can take milliseconds, and the loop must keep dispatching meanwhile)."""
        if not self._unsynced or self._journal is None:
            return None
        self._unsynced = False
        fd = self._journal.fileno()

        def fsync() -> None:
            with contextlib.suppress(OSError):  # the journal was closed by a compaction
                os.fsync(fd)

        return fsync

    def wants_compaction(self) -> bool:
        return self.journal_bytes > max(MIN_COMPACT_BYTES, 4 * self.snapshot_bytes)

    def compact(self, saved: Saved) -> None:
        """Write `saved` as the snapshot of a new generation, and start its empty journal."""
        self._buffer.clear()  # everything buffered is part of `saved`
        self._unsynced = False
        generation = self.generation + 1
        try:
            data = orjson.dumps(_snapshot(saved, generation))
        except TypeError:  # what orjson refuses (an integer past 64 bits): json writes it
            data = dumps(_snapshot(saved, generation, verbatim=False))
        tmp = self.dir / ".state.json.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.dir / "state.json")
        fsync_dir(self.dir)
        old = self._journal
        self._journal = open(self.dir / f"journal-{generation}.jsonl", "ab")  # noqa: SIM115
        if old is not None:
            old.close()
        with contextlib.suppress(OSError):
            (self.dir / f"journal-{self.generation}.jsonl").unlink()
        self.generation = generation
        self.snapshot_bytes = len(data)
        self.journal_bytes = 0

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
