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
burst read from tail-events, and at every batch start and end; the fsync follows within
journal.SYNC_DELAY. The snapshot (saved.py) is rewritten (temp file, fsync, rename) at start,
at a clean stop, and when the journal has grown past four times its size (16 MiB at least),
then a new journal generation begins. It waits while a catch-up is being read, and while the
events still queued would make the new snapshot more than a quarter of the journal (right
after a catch-up, when it would be at its largest): the runs that take them shrink it. It
never waits past PUT_OFF times the usual size.

Loading tolerates a torn last line (a crash mid-write). Anything else unreadable is reported,
renamed aside (`*.corrupt-TIMESTAMP`), and never fatal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from ghitwork.saved import Saved, dumps, encode_snapshot, from_snapshot, loads
from ghitwork.state import Route

MIN_COMPACT_BYTES = 16 * 1024 * 1024
PUT_OFF = 8  # how much further a journal may grow while a compaction waits


class StateDirError(Exception):
    """The state dir cannot be used at all (not writable, or locked by another ghit-work)."""


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
                saved, generation = from_snapshot(loads(snapshot.read_bytes()))
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
        self.event_bytes = 0  # what the events journaled so far took, for their mean size
        self.events = 0
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
                saved, generation = from_snapshot(loads(snapshot.read_bytes()))
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
        """Routed events, each journaled with its agents and the bytes tail-events printed,
        on one line; events no agent wants are not. Returns the id of the last journaled."""
        prefixes = self._agents_json
        extend = self._buffer.extend
        last = None
        size = count = 0
        for event, agents in routes:
            if agents:
                prefix = prefixes.get(agents)
                if prefix is None:
                    prefix = prefixes[agents] = b'{"to":' + dumps(list(agents)) + b',"e":'
                raw = event.raw or dumps(event.data)
                if b"\n" in raw:  # not from the decoder (it makes one line of an object)
                    raw = raw.replace(b"\n", b" ")
                extend((prefix, raw, b"}\n"))
                last = event.id
                size += len(raw)
                count += 1
        self.event_bytes += size
        self.events += count
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
        (an fsync takes milliseconds, 25 ms in all over a 100k-event catch-up, and the loop
        keeps dispatching meanwhile). It syncs its own descriptor of the journal, so a
        compaction closing the journal meanwhile cannot make it sync another file; it raises
        OSError when the fsync fails."""
        if not self._unsynced or self._journal is None:
            return None
        self._unsynced = False
        fd = os.dup(self._journal.fileno())

        def fsync() -> None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        return fsync

    def wants_compaction(self, busy: bool = False, queued: int = 0) -> bool:
        """Time for a new snapshot: the journal has outgrown the last one. Not yet while
        `busy` (a catch-up is being read), nor while the `queued` events (waiting or in a
        run, counted once per agent, as a snapshot holds them) would make the snapshot more
        than a quarter of the journal; either waits until the journal is PUT_OFF times past
        due."""
        due = max(MIN_COMPACT_BYTES, 4 * self.snapshot_bytes)
        if self.journal_bytes <= due:
            return False
        if self.journal_bytes > due * PUT_OFF:
            return True
        mean = self.event_bytes / self.events if self.events else 0.0
        return not busy and 4 * queued * mean <= self.journal_bytes

    def compact(self, saved: Saved) -> None:
        """Write `saved` as the snapshot of a new generation, and start its empty journal."""
        self._buffer.clear()  # everything buffered is part of `saved`
        self._unsynced = False
        generation = self.generation + 1
        data = encode_snapshot(saved, generation)
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
