"""The durable state dir: a snapshot plus an append-only journal, and a lock.

    state_dir/                     flock held on the directory itself by the running ghit-work
    state_dir/lock                 the running ghit-work's pid (for `status`, `dead-letters`)
    state_dir/state.json           snapshot: generation, cursor, per agent pending events,
                                   in-flight ids, session id, recent run times
    state_dir/journal-G.jsonl      records since snapshot generation G, one JSON per line
    state_dir/children             process groups started (children.py)
    state_dir/requests/            redelivery requests (deadletters.py)
    state_dir/status.json          what the instance is doing (snapshot.py)

Everything here is owner-only (files.py): a state_dir ghit-work creates is 0700, its files
0600. The lock is a flock on the directory, which cannot be deleted from under a running
instance (a lock *file* can: a second instance would then start beside the first).

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

A write that fails (a full disk) raises StateWriteError and loses nothing: the records stay
buffered and are written again whole, in order, at the next flush; a write that stopped
part-way is cut back to the last whole record first, so the journal never holds a torn record
followed by more. A snapshot that cannot be written leaves the previous one and its journal
in force.

Loading tolerates a torn last line (a crash mid-write). Anything else unreadable is reported,
renamed aside (`*.corrupt-TIMESTAMP`), and never fatal; a snapshot set aside is reported with
what was lost with it and what its journal recovered.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from ghitwork.bus.changes import Route
from ghitwork.persist.lock import StateDirError as StateDirError
from ghitwork.persist.lock import StateLock, _reason
from ghitwork.persist.lock import StateWriteError as StateWriteError
from ghitwork.persist.lock import running_pid as running_pid
from ghitwork.persist.saved import Saved, dumps, read_snapshot, snapshot_chunks
from ghitwork.persist.saved import peek as peek
from ghitwork.system.files import open_fd, write_atomic

MIN_COMPACT_BYTES = 16 * 1024 * 1024
PUT_OFF = 8  # how much further a journal may grow while a compaction waits
COMPACT_RETRY = 30.0  # seconds before a snapshot that could not be written is tried again


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _journal_generation(path: Path) -> int:
    try:
        return int(path.name.removeprefix("journal-").removesuffix(".jsonl"))
    except ValueError:
        return -1


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
        self._started = False  # a generation was begun (compact): the journal is written
        self._journal: IO[bytes] | None = None
        self._written = 0  # the journal's length up to its last whole record
        self._torn = False  # a write stopped part-way: cut back to _written before the next
        self._lock = StateLock(state_dir)
        self._buffer: list[bytes] = []
        self._unsynced = False
        self._agents_json: dict[tuple[str, ...], bytes] = {}
        self._folded: list[Path] = []  # journals of older generations, gone at the next snapshot
        self._compact_after = 0.0  # monotonic time: a failed snapshot is not retried before
        self.snapshot_failed = False  # the last compaction could not write its snapshot

    # -- opening
    def open(self) -> Saved:
        """Take the lock and load what the last run left; `compact()` then begins the new
        generation. Raises StateDirError when the state dir cannot be used (another
        ghit-work holds it, it cannot be created), StateWriteError when the pid file
        cannot be written."""
        self._lock.take()
        try:
            return self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> Saved:
        saved, generation = Saved(), 0
        snapshot = self.dir / "state.json"
        journals = sorted(self.dir.glob("journal-*.jsonl"), key=_journal_generation)
        lost = None
        if snapshot.exists():
            try:
                saved, generation = read_snapshot(snapshot.read_bytes())
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
                lost = f"{snapshot}: unreadable ({_reason(error)}); {self._set_aside(snapshot)}"
                saved, generation = Saved(), 0
        elif any(_journal_generation(journal) > 0 for journal in journals):
            lost = f"{snapshot}: missing, beside the journals of a later generation"
        if lost is None:
            for journal in journals:
                if journal.name == f"journal-{generation}.jsonl":
                    self._replay(journal, saved)
                else:
                    with contextlib.suppress(OSError):
                        journal.unlink()  # a generation already folded into the snapshot
        else:
            # The snapshot is gone: what the journals hold is all there is. Each is replayed,
            # oldest first, and kept until the next snapshot has it.
            for journal in journals:
                self._replay(journal, saved)
            self._folded = journals
            if journals:
                generation = max(0, _journal_generation(journals[-1]))
            self.report("error", f"{lost}. {_what_was_lost(saved, journals)}")
        self.generation = generation
        return saved

    def _replay(self, journal: Path, saved: Saved) -> None:
        """Replay `journal` a line at a time (a journal of 100,000 events read whole, and
        split, held twice its size at once: the recovery's peak memory)."""
        bad = 0
        try:
            with journal.open("rb") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    try:
                        saved.apply_line(line)
                    except (ValueError, TypeError, KeyError, AttributeError):
                        if not line.endswith(b"\n"):  # the last, never finished
                            self.report(
                                "info", f"{journal}: ignored a torn last record (a crash mid-write)"
                            )
                            continue
                        bad += 1
        except OSError as error:
            self.report(
                "warning", f"{journal}: unreadable ({_reason(error)}); {self._set_aside(journal)}"
            )
            return
        if bad:
            where = self._set_aside(journal, copy=True)
            self.report(
                "warning",
                f"{journal}: {bad} unreadable record(s) skipped, the rest recovered; {where}",
            )

    def _set_aside(self, path: Path, copy: bool = False) -> str:
        """Rename `path` (or copy it) to `*.corrupt-TIMESTAMP`; says where it is kept."""
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            if copy:
                write_atomic(aside, path.read_bytes())
            else:
                path.rename(aside)
        except OSError as error:
            return f"it could not be set aside: {_reason(error)}"
        return f"kept as {aside}"

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

    @property
    def unwritten(self) -> int:
        """How many records are recorded but not written yet (0 once the journal has every
        change: a crash then loses nothing)."""
        return sum(chunk.count(b"\n") for chunk in self._buffer)

    def flush(self, sync: bool = True) -> None:
        """One write for everything recorded since the last flush, and an fsync unless the
        caller syncs later (`sync()`): the journal is ordered, so a late fsync only means a
        crash replays a little more from tail-events, never that an event is skipped.

        Raises StateWriteError when the write fails: the records stay buffered, to be
        written again whole (after whatever is recorded meanwhile) by the next flush."""
        if not self._started:
            return  # before the first generation: compact() writes what there is
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer[:] = [data]  # kept, whole, until it is on disk
            self._append(data)
            self._buffer.clear()
            self.journal_bytes += len(data)
            self._unsynced = True
        if sync:
            self.sync()

    def _append(self, data: bytes) -> None:
        name = f"journal-{self.generation}.jsonl"
        try:
            if self._journal is None:
                self._open_journal()
            assert self._journal is not None
            if self._torn:  # never append after a torn record
                self._journal.truncate(self._written)
                self._torn = False
            view = memoryview(data)
            while view:
                written = self._journal.write(view)
                if not written:
                    raise OSError(errno.EIO, "the journal took no bytes")
                view = view[written:]
        except OSError as error:
            if self._journal is not None:
                self._torn = True
                with contextlib.suppress(OSError):
                    self._journal.truncate(self._written)
                    self._torn = False
            raise StateWriteError(self.dir, name, error) from None
        self._written += len(data)

    def _open_journal(self) -> None:
        fd = open_fd(self.dir / f"journal-{self.generation}.jsonl", os.O_WRONLY | os.O_APPEND)
        self._journal = open(fd, "ab", buffering=0)  # noqa: SIM115 closed by close()/compact()
        self._written = os.fstat(fd).st_size
        self._torn = False

    def sync(self) -> None:
        if self._unsynced and self._journal is not None:
            try:
                os.fsync(self._journal.fileno())
            except OSError as error:
                raise StateWriteError(self.dir, f"journal-{self.generation}.jsonl", error) from None
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

    def wants_compaction(self, busy: bool = False, queued: int | Callable[[], int] = 0) -> bool:
        """Time for a new snapshot: the journal has outgrown the last one. Not yet while
        `busy` (a catch-up is being read), nor while the `queued` events (waiting or in a
        run, counted once per agent, as a snapshot holds them) would make the snapshot more
        than a quarter of the journal; either waits until the journal is PUT_OFF times past
        due. Not within COMPACT_RETRY of a snapshot that could not be written. `queued` may
        be a callable: counting walks every conversation, so it is asked only when due."""
        due = max(MIN_COMPACT_BYTES, 4 * self.snapshot_bytes)
        if self.journal_bytes <= due or time.monotonic() < self._compact_after:
            return False
        if self.journal_bytes > due * PUT_OFF:
            return True
        if busy:
            return False
        mean = self.event_bytes / self.events if self.events else 0.0
        count = queued() if callable(queued) else queued
        return 4 * count * mean <= self.journal_bytes

    def compact(self, saved: Saved) -> None:
        """Write `saved` as the snapshot of a new generation, and start its empty journal.

        Raises StateWriteError when the snapshot cannot be written: the previous snapshot
        and its journal stay in force (with what is buffered, still to be written to it), and
        nothing is lost. Once the new snapshot is in place, the store has moved to its
        generation whatever else fails (the journal is then opened at the next flush)."""
        generation = self.generation + 1
        try:
            written = write_atomic(self.dir / "state.json", snapshot_chunks(saved, generation))
        except OSError as error:
            self._compact_after = time.monotonic() + COMPACT_RETRY
            self.snapshot_failed = True
            raise StateWriteError(self.dir, "state.json", error) from None
        self.snapshot_failed = False
        # Everything buffered is part of `saved`: the old journal is done with.
        self._buffer.clear()
        self._unsynced = False
        old, self._journal = self._journal, None
        if old is not None:
            with contextlib.suppress(OSError):
                old.close()
        folded = [*self._folded, self.dir / f"journal-{self.generation}.jsonl"]
        self._folded = []
        self.generation = generation
        self.snapshot_bytes = written
        self.journal_bytes = 0
        self._started = True
        try:
            fsync_dir(self.dir)  # the rename is durable before the old journal goes
        except OSError as error:
            raise StateWriteError(self.dir, "state.json", error) from None
        for journal in folded:
            with contextlib.suppress(OSError):
                journal.unlink()
        try:
            self._open_journal()
        except OSError as error:
            raise StateWriteError(self.dir, f"journal-{generation}.jsonl", error) from None

    def close(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(OSError):
                self._journal.close()
            self._journal = None
        self._lock.release()


def _what_was_lost(saved: Saved, journals: list[Path]) -> str:
    """For a snapshot set aside: what went with it, what the journals gave back, and where
    tail-events starts."""
    lost = (
        "Lost with it: the cursor and the undelivered events, session ids, dead letters and "
        "usage totals it held"
    )
    if not journals:
        return (
            f"{lost}; no journal to recover from: tail-events starts without a cursor (new "
            "events only)"
        )
    names = ", ".join(journal.name for journal in journals)
    events = {i for agent in saved.agents.values() for i in agent.pending}
    agents = sum(1 for agent in saved.agents.values() if agent.pending)
    start = (
        f"tail-events resumes after event {saved.cursor}"
        if saved.cursor is not None
        else "tail-events starts without a cursor (new events only)"
    )
    return (
        f"{lost}; recovered from {names}: {len(events)} undelivered event(s) for {agents} "
        f"agent(s), {len(saved.dead)} dead letter(s), cursor {saved.cursor}: {start}"
    )
