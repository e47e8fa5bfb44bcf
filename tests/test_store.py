"""The state dir: journal replay, snapshots, torn and corrupt files, the lock."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import event
from rxfakes import agent_config

from ghitwork.bus.changes import (
    AgentState,
    Change,
    ConfigApplied,
    Notice,
    RunFinished,
    SessionsLoaded,
    StateBus,
)
from ghitwork.config.model import Config
from ghitwork.flow.dispatch import Dispatcher
from ghitwork.model.events import Event, event_of
from ghitwork.model.ids import Ids
from ghitwork.model.results import RunResult
from ghitwork.observe.dashboard import DashboardModel
from ghitwork.persist import journal as journal_module
from ghitwork.persist import saved as saved_module
from ghitwork.persist.journal import Journal
from ghitwork.persist.pending import Pending
from ghitwork.persist.saved import Saved, SavedAgent
from ghitwork.persist.store import MIN_COMPACT_BYTES, PUT_OFF, StateDirError, StateWriteError, Store


def opened(path: Path) -> tuple[Store, Saved, list[tuple[str, str]]]:
    reports: list[tuple[str, str]] = []
    store = Store(path, lambda level, message: reports.append((level, message)))
    return store, store.open(), reports


def test_journal_records_rebuild_pending_inflight_sessions_and_cursor(tmp_path: Path) -> None:
    store, saved, _ = opened(tmp_path)
    assert saved.cursor is None and saved.agents == {}
    store.compact(saved)
    one = Event(1, "k", None, (), {"id": 1, "kind": "k"}, b'{"id": 1, "kind": "k"}')
    two = Event(2, "k", None, (), {"id": 2, "kind": "k"}, b'{\n "id": 2,\n "kind": "k"\n}')
    nobody = Event(3, "k", None, (), {"id": 3, "kind": "k"})
    assert store.record_events([(one, ("a", "b")), (two, ("a",)), (nobody, ())]) == 2
    store.record({"start": "a", "ids": [1, 2], "at": 10.0})
    store.record({"done": "b", "ids": [1]})
    store.record({"session": "a", "id": "S1"})
    store.record({"c": 9})
    store.flush()
    store.close()

    reopened, again, _ = opened(tmp_path)
    reopened.close()
    assert again.cursor == 9
    a = again.agents["a"]
    assert sorted(a.pending) == [1, 2] and a.inflight == {1, 2}
    assert a.session_id == "S1" and a.runs == [10.0]
    assert again.agents["b"].pending == {}


def test_a_snapshot_starts_a_new_generation_and_old_journals_go(tmp_path: Path) -> None:
    store, saved, _ = opened(tmp_path)
    store.compact(saved)
    store.record({"c": 5})
    store.flush()
    saved.cursor = 5
    saved.agents["a"] = SavedAgent(pending=Pending([{"id": 3, "kind": "k"}]), sessions={"": "x"})
    store.compact(saved)
    assert sorted(p.name for p in tmp_path.glob("journal-*")) == ["journal-2.jsonl"]
    store.close()
    reopened, loaded, _ = opened(tmp_path)
    reopened.close()
    assert loaded.cursor == 5 and list(loaded.agents["a"].pending) == [3]


def test_a_snapshot_writes_events_as_printed_and_whatever_orjson_refuses_with_json(
    tmp_path: Path,
) -> None:
    store, saved, _ = opened(tmp_path)
    printed = b'{"id": 1, "kind": "k", "x": [1, {"y": null}]}'
    saved.agents["a"] = SavedAgent(pending=Pending([Event(1, "k", None, (), None, printed)]))
    saved.agents["b"] = SavedAgent(pending=Pending([{"id": 2, "kind": "k", "big": 2**70}]))
    store.compact(saved)  # orjson refuses 2**70: the whole snapshot goes through json
    saved.agents["b"].pending.add({"id": 2, "kind": "k"})
    store.compact(saved)  # now orjson, the event spliced in as printed
    assert printed in (tmp_path / "state.json").read_bytes()
    store.close()
    for big in (False, True):
        if big:
            store, saved, _ = opened(tmp_path)
            saved.agents["b"].pending.add({"id": 2, "kind": "k", "big": 2**70})
            store.compact(saved)
            store.close()
        reopened, loaded, _ = opened(tmp_path)
        reopened.close()
        # loaded as bytes (an Event), parsed only when asked; as printed unless json wrote them
        a = loaded.agents["a"].pending[1]
        assert isinstance(a, Event) and (big or a.raw == printed)
        assert a.data == {"id": 1, "kind": "k", "x": [1, {"y": None}]}
        b = loaded.agents["b"].pending[2]
        b = b.data if isinstance(b, Event) else b
        assert b["id"] == 2 and b.get("big") == (2**70 if big else None)


def test_compaction_waits_while_a_catch_up_is_read_but_not_forever(tmp_path: Path) -> None:
    store, saved, _ = opened(tmp_path)
    store.compact(saved)
    store.journal_bytes = MIN_COMPACT_BYTES + 1
    assert store.wants_compaction() and not store.wants_compaction(busy=True)
    store.journal_bytes = MIN_COMPACT_BYTES * PUT_OFF + 1
    assert store.wants_compaction(busy=True)
    store.close()


def test_compaction_waits_while_the_queued_events_would_make_a_large_snapshot(
    tmp_path: Path,
) -> None:
    """Right after a catch-up most of the journal is still queued: a snapshot then would be
    at its largest. It waits for the runs to take the events, up to PUT_OFF times due."""
    store, saved, _ = opened(tmp_path)
    store.compact(saved)
    raw = b'{"id": 1, "kind": "k", "pad": "' + b"x" * 67 + b'"}'  # 100 bytes
    store.record_events([(Event(1, "k", None, (), None, raw), ("a",))])
    assert store.event_bytes == 100 and store.events == 1
    store.journal_bytes = MIN_COMPACT_BYTES + 1
    quarter = store.journal_bytes // 400  # events whose snapshot is a quarter of the journal
    assert store.wants_compaction(queued=quarter)
    assert not store.wants_compaction(queued=quarter + 1)
    assert not store.wants_compaction(busy=True, queued=0)
    store.journal_bytes = MIN_COMPACT_BYTES * PUT_OFF + 1
    assert store.wants_compaction(queued=10**9)
    store.close()


def test_a_torn_last_record_is_ignored(tmp_path: Path) -> None:
    store, saved, _ = opened(tmp_path)
    store.compact(saved)
    store.record({"c": 4})
    store.flush()
    store.close()
    with (tmp_path / "journal-1.jsonl").open("ab") as handle:
        handle.write(b'{"to":["a"],"e":{"id":5,"ki')
    reopened, loaded, reports = opened(tmp_path)
    reopened.close()
    assert loaded.cursor == 4
    assert reports == [
        ("info", f"{tmp_path / 'journal-1.jsonl'}: ignored a torn last record (a crash mid-write)")
    ]


def test_a_corrupt_snapshot_is_reported_set_aside_and_never_fatal(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    store, saved, reports = opened(tmp_path)
    assert saved.cursor is None
    assert [level for level, _ in reports] == ["error"]
    assert "state.json: unreadable" in reports[0][1] and "kept as" in reports[0][1]
    assert "no journal to recover from: tail-events starts without a cursor" in reports[0][1]
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1
    store.close()


def test_a_corrupt_snapshot_says_what_was_lost_and_its_journal_gives_back_the_rest(
    tmp_path: Path,
) -> None:
    """The events and cursor of a snapshot set aside are lost, and the report says so; the
    journal written since it is replayed (it was deleted as an old generation), and the
    report says what it recovered and where tail-events resumes."""
    store, saved, _ = opened(tmp_path)
    saved.cursor = 4
    saved.agents["a"] = SavedAgent(pending=Pending([{"id": 3, "kind": "k"}]), sessions={"": "S"})
    store.compact(saved)
    store.compact(saved)  # generation 2
    seven = Event(7, "k", None, (), {"id": 7, "kind": "k"}, b'{"id":7,"kind":"k"}')
    store.record_events([(seven, ("a", "b"))])
    store.record({"c": 9})
    store.flush()
    store.close()
    (tmp_path / "state.json").write_text('{"version": 1, "generation": 2, "cursor": 4, "age')

    reopened, loaded, reports = opened(tmp_path)
    assert loaded.cursor == 9
    assert sorted(loaded.agents["a"].pending) == [7] and sorted(loaded.agents["b"].pending) == [7]
    [(level, message)] = reports
    assert level == "error"
    assert message.startswith(f"{tmp_path / 'state.json'}: unreadable (")
    assert (
        "Lost with it: the cursor and the undelivered events, session ids, dead letters and "
        "usage totals it held; recovered from journal-2.jsonl: 1 undelivered event(s) for 2 "
        "agent(s), 0 dead letter(s), cursor 9: tail-events resumes after event 9"
    ) in message
    reopened.compact(loaded)  # the recovered journal goes once a snapshot has it
    assert [p.name for p in tmp_path.glob("journal-*")] == ["journal-3.jsonl"]
    reopened.close()
    again, kept, reports = opened(tmp_path)
    again.close()
    assert reports == [] and kept.cursor == 9 and sorted(kept.agents["a"].pending) == [7]


class _DiskFull:
    """The journal's file, on a disk that fills: the next `writes` writes put `part` bytes
    on disk and then fail with ENOSPC, and the next `truncates` truncations fail too."""

    def __init__(self, real: Any, writes: int = 1, part: int = 10, truncates: int = 0) -> None:
        self.real = real
        self.writes = writes
        self.part = part
        self.truncates = truncates

    def write(self, data: bytes | memoryview) -> int:
        if self.writes:
            self.writes -= 1
            self.real.write(bytes(data[: self.part]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(self.real.write(data))

    def truncate(self, size: int) -> int:
        if self.truncates:
            self.truncates -= 1
            raise OSError(errno.EIO, "Input/output error")
        return int(self.real.truncate(size))

    def fileno(self) -> int:
        return int(self.real.fileno())

    def close(self) -> None:
        self.real.close()


@pytest.mark.parametrize("truncates", [0, 1])
def test_a_failed_journal_write_is_retried_whole_and_nothing_follows_a_torn_record(
    tmp_path: Path, truncates: int
) -> None:
    """ENOSPC part-way through a write: the records stay buffered, the journal is cut back to
    its last whole record (at once, or before the next write when that failed too), and the
    next flush writes them whole; after a crash every event and the run start are there."""
    store, saved, _ = opened(tmp_path)
    store.compact(saved)
    store.record({"c": 1})
    store.flush()
    journal = tmp_path / "journal-1.jsonl"
    whole = journal.read_bytes()
    store._journal = _DiskFull(store._journal, truncates=truncates)  # type: ignore[assignment]
    ten = Event(10, "k", None, (), None, b'{"id":10,"kind":"k","pad":"' + b"x" * 50 + b'"}')
    store.record_events([(ten, ("a",))])
    store.record({"start": "a", "ids": [10], "at": 1.0})
    with pytest.raises(StateDirError) as failed:
        store.flush()
    assert str(failed.value) == (
        f"state_dir {tmp_path}: cannot write journal-1.jsonl: No space left on device"
    )
    assert store.dirty and store.unwritten == 2
    on_disk = journal.read_bytes()
    assert on_disk == (whole + b'{"to":["a"' if truncates else whole)  # 10 bytes torn
    store.record({"c": 11})
    store.flush()  # the space is back
    lines = journal.read_bytes().splitlines()
    assert [json.loads(line) for line in lines][1:] == [
        {"to": ["a"], "e": json.loads(ten.raw)},
        {"start": "a", "ids": [10], "at": 1.0},
        {"c": 11},
    ]
    store.close()  # as kill -9 would: the restart finds event 10 in flight, and the cursor
    reopened, loaded, reports = opened(tmp_path)
    reopened.close()
    assert reports == []
    assert loaded.cursor == 11
    assert list(loaded.agents["a"].pending) == [10] and loaded.agents["a"].inflight == {10}


def test_a_snapshot_that_cannot_be_written_raises_a_clear_error_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at a compaction: StateWriteError naming the file; the old generation and
    what was buffered for it stay, the temp file is gone, and the next flush writes it."""
    store, saved, _ = opened(tmp_path)
    store.compact(saved)
    store.record({"c": 5})

    def full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", full)
        with pytest.raises(StateWriteError) as failed:
            store.compact(saved)
    assert str(failed.value) == (
        f"state_dir {tmp_path}: cannot write state.json: No space left on device"
    )
    assert store.generation == 1 and store.dirty and store.snapshot_failed
    assert not list(tmp_path.glob(".*.tmp"))
    store.journal_bytes = MIN_COMPACT_BYTES * PUT_OFF + 1
    assert not store.wants_compaction()  # not tried again at once, even when long due
    store.flush()
    store.close()
    reopened, loaded, _ = opened(tmp_path)
    assert loaded.cursor == 5
    reopened.compact(loaded)
    assert not reopened.snapshot_failed
    reopened.close()


def test_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    state_dir = tmp_path / "parent" / "state"
    old = os.umask(0)
    try:
        store, saved, _ = opened(state_dir)
        store.compact(saved)
        store.record({"c": 1})
        store.flush()
        (state_dir / "journal-1.jsonl").write_text('{"c": 1}\ngarbage\n')  # copied aside
        store.close()
        store, _, _ = opened(state_dir)
        store.compact(saved)
        store.close()
    finally:
        os.umask(old)
    modes = {
        str(path.relative_to(tmp_path)): path.stat().st_mode & 0o7777
        for path in [state_dir.parent, *state_dir.parent.rglob("*")]
    }
    assert modes == {
        "parent": 0o700,
        "parent/state": 0o700,
        "parent/state/lock": 0o600,
        "parent/state/state.json": 0o600,
        "parent/state/journal-2.jsonl": 0o600,
        **{
            str(p.relative_to(tmp_path)): 0o600 for p in state_dir.glob("journal-1.jsonl.corrupt-*")
        },
    }
    assert len(modes) == 6


def test_a_corrupt_journal_line_is_skipped_and_a_copy_kept(tmp_path: Path) -> None:
    store, saved, _ = opened(tmp_path)
    store.compact(saved)
    store.close()
    (tmp_path / "journal-1.jsonl").write_text('{"c": 1}\ngarbage\n{"c": 3}\n')
    reopened, loaded, reports = opened(tmp_path)
    reopened.close()
    assert loaded.cursor == 3
    assert "1 unreadable record(s) skipped" in reports[0][1]
    assert len(list(tmp_path.glob("journal-1.jsonl.corrupt-*"))) == 1


def test_a_second_store_on_the_same_dir_is_refused(tmp_path: Path) -> None:
    first, _, _ = opened(tmp_path)
    with pytest.raises(StateDirError, match="in use by another ghit-work"):
        opened(tmp_path)
    first.close()
    second, _, _ = opened(tmp_path)
    second.close()


def test_the_lock_holds_when_its_file_is_deleted(tmp_path: Path) -> None:
    """The flock is on the directory: deleting `lock` lets no second store in."""
    first, _, _ = opened(tmp_path)
    (tmp_path / "lock").unlink()
    with pytest.raises(StateDirError, match=f"in use by another ghit-work \\(pid {os.getpid()}\\)"):
        opened(tmp_path)
    first.close()
    second, _, _ = opened(tmp_path)
    second.close()


def test_snapshot_writes_are_whole_files(tmp_path: Path) -> None:
    store, saved, _ = opened(tmp_path)
    saved.cursor = 7
    store.compact(saved)
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["cursor"] == 7 and data["version"] == 1
    assert not list(tmp_path.glob(".*.tmp"))
    store.close()


def test_usage_totals_survive_a_torn_write_exactly(tmp_path: Path) -> None:
    """kill -9 in the middle of writing a usage record: the torn record is not applied, the
    whole ones are applied once, whatever the byte the write stopped at."""
    from ghitwork.model.usage import Charge, Usage

    original = tmp_path / "original"
    store, saved, _ = opened(original)
    store.compact(saved)
    for i in range(3):
        charge = Charge("a", float(i), "2026-11-26", Usage(100, 10, 5, 0.01))
        store.record({"usage": charge.to_record()})
    store.flush()
    store.close()
    [journal] = original.glob("journal-*.jsonl")
    whole = journal.read_bytes()
    last = whole.rstrip(b"\n").rfind(b"\n") + 1  # where the third record starts
    for cut in range(last, len(whole) + 1):
        crashed = tmp_path / f"cut-{cut}"
        crashed.mkdir()
        (crashed / "state.json").write_bytes((original / "state.json").read_bytes())
        (crashed / journal.name).write_bytes(whole[:cut])
        reopened, again, _ = opened(crashed)
        reopened.close()
        expected = 3 if cut >= len(whole) - 1 else 2  # without its newline it is still whole
        total = again.ledger.agent("a").total
        assert again.ledger.agent("a").runs == expected, cut
        assert (total.input_tokens, total.output_tokens, total.cached_tokens) == (
            100 * expected,
            10 * expected,
            5 * expected,
        ), cut
        assert total.cost_usd == pytest.approx(0.01 * expected), cut


def test_the_deferred_fsync_runs_off_the_loop_on_its_own_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's deferred fsync runs on a worker thread, syncs even when a compaction
    closed the journal meanwhile, and a failed one is reported, not raised."""
    store, saved, _ = opened(tmp_path)
    store.compact(saved)
    bus = StateBus()
    notices: list[Notice] = []
    bus.changes.subscribe(lambda c: notices.append(c) if isinstance(c, Notice) else None)
    journal = Journal(store, bus, Saved)
    synced: list[int] = []  # the inode each fsync off the main thread synced
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread() is threading.main_thread():
            real_fsync(fd)  # the compaction's own
            return
        synced.append(os.fstat(fd).st_ino)
        if len(synced) > 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=1))  # in order: see below
        for _ in range(2):
            store.record({"c": 1})
            store.flush(sync=False)
            journaled = os.stat(tmp_path / f"journal-{store.generation}.jsonl").st_ino
            journal._sync()
            store.compact(saved)  # closes the journal the fsync is on its way to
            await loop.run_in_executor(None, lambda: None)  # after the fsync and its report
            assert synced[-1] == journaled

    monkeypatch.setattr(os, "fsync", fsync)
    asyncio.run(scenario())
    assert len(synced) == 2
    assert [n.message for n in notices] == [f"cannot sync {tmp_path}: Input/output error"]
    store.close()


def test_a_snapshot_is_written_in_pieces_and_reads_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot is written a few queued events at a time (never held whole): pieces of
    any size, an agent with nothing queued, one piece orjson refuses, all read back as one
    document."""
    monkeypatch.setattr(saved_module, "CHUNK", 3)
    store, saved, _ = opened(tmp_path)
    printed = {i: b'{"id": %d, "kind": "k"}' % i for i in range(1, 11)}
    saved.agents["a"] = SavedAgent(
        pending=Pending(Event(i, "k", None, (), None, printed[i]) for i in range(1, 8)),
        sessions={"": "s-a", "thread:x/1": "s-x"},
    )
    saved.agents["b"] = SavedAgent(pending=Pending([{"id": 8, "kind": "k", "big": 2**70}]))
    saved.agents["c"] = SavedAgent(runs=[1.5])  # nothing queued, still kept
    saved.cursor = 10
    store.compact(saved)
    store.close()
    document = json.loads((tmp_path / "state.json").read_bytes())
    assert [e["id"] for e in document["agents"]["a"]["pending"]] == list(range(1, 8))
    assert document["agents"]["a"]["sessions"] == {"thread:x/1": "s-x"}
    assert document["agents"]["b"]["pending"] == [{"id": 8, "kind": "k", "big": 2**70}]
    assert document["agents"]["c"] == {**document["agents"]["c"], "pending": [], "runs": [1.5]}
    assert document["cursor"] == 10 and "dead_letters" in document
    assert printed[4] in (tmp_path / "state.json").read_bytes()  # spliced in as printed
    reopened, loaded, reports = opened(tmp_path)
    reopened.close()
    assert reports == []
    assert sorted(loaded.agents["a"].pending) == list(range(1, 8))
    assert loaded.agents["a"].sessions == {"": "s-a", "thread:x/1": "s-x"}
    assert loaded.cursor == 10


def test_the_journal_remembers_a_bounded_number_of_session_ids_and_never_skips_a_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It writes a conversation's session id only when it changed, so it remembers what it
    wrote, for the KEPT_SESSIONS most recent conversations only (thread mode: one per
    thread). One it forgot is written again: a session cleared is never left unwritten.
    A conversation with no session costs nothing (SPEC §12): not remembered, not written,
    until one with a session was forgotten."""
    monkeypatch.setattr(journal_module, "KEPT_SESSIONS", 2)
    store, saved, _ = opened(tmp_path)
    store.compact(saved)
    journal = Journal(store, StateBus(), Saved)

    def finished(thread: str, session: str | None) -> None:
        ran = RunResult("a", (1,), ("true",), 0.0, 0.0, returncode=0, conversation=thread)
        journal(
            RunFinished(
                agent="a",
                result=ran,
                new=AgentState.IDLE,
                queue=0,
                session_id=session,
                conversation=thread,
            )
        )

    async def scenario() -> None:  # the journal defers its fsyncs on the loop
        for n in range(10, 20):
            finished(f"thread:t/{n}", None)  # no session: nothing to write or remember
        assert journal._sessions == {}
        finished("thread:t/1", "S1")
        finished("thread:t/1", "S1")  # unchanged: not written again
        finished("thread:t/2", "S2")
        finished("thread:t/2", None)  # cleared: written, and no longer remembered
        finished("thread:t/2", "S2")
        finished("thread:t/3", "S3")  # thread 1 is forgotten
        finished("thread:t/1", None)  # its session cleared: written all the same
        journal._sync()  # what the timer would do

    asyncio.run(scenario())
    store.flush()
    store.close()
    path = tmp_path / f"journal-{store.generation}.jsonl"
    sessions = [
        (r.get("conv"), r["id"])
        for r in map(json.loads, path.read_text().splitlines())
        if "session" in r
    ]
    assert sessions == [
        ("thread:t/1", "S1"),
        ("thread:t/2", "S2"),
        ("thread:t/2", None),
        ("thread:t/2", "S2"),
        ("thread:t/3", "S3"),
        ("thread:t/1", None),
    ]
    assert len(journal._sessions) == 2
    reopened, again, _ = opened(tmp_path)
    reopened.close()
    assert again.agents["a"].sessions == {"thread:t/2": "S2", "thread:t/3": "S3"}


def test_a_restart_hands_its_saved_events_over_and_lets_the_loaded_state_go() -> None:
    """The daemon writes what it loaded first; then the dispatcher takes each agent's saved
    events, in id order and split by thread, and empties that agent's table as it goes, and
    the loaded state is let go: 100,000 saved events are never held in two tables at once
    (`benchmarks/recovery.py`: a restart's peak memory stays under the crashed instance's)."""
    agent = agent_config("a", conversations="thread", concurrency=2)
    published: list[Change] = []
    dispatcher = Dispatcher(Config(path=Path("x.toml"), agents=(agent,)), published.append, {})
    saved = Saved(cursor=4)
    threads = {1: "teams/ghit/ghit/1", 2: "teams/ghit/ghit/2", 3: "teams/ghit/ghit/1", 4: "x"}
    for ident in (4, 3, 1, 2):  # as a journal's replay may leave them
        scopes = [f"thread:{threads[ident]}"] if ident != 4 else []
        found = event_of(json.dumps(event(ident, scopes=scopes)).encode())
        assert isinstance(found, Event)
        saved.agent("a").pending.add(found)
    saved.agent("a").inflight = Ids([3])
    saved.agent("a").sessions = {"thread:teams/ghit/ghit/1": "s-1"}
    [(name, parts)] = dispatcher.restore(saved)
    assert saved.agents["a"].pending == {}  # handed over, not copied
    assert name == "a"
    assert [(c, [e.id for e in events]) for c, events in parts] == [
        ("thread:teams/ghit/ghit/1", [1, 3]),
        ("thread:teams/ghit/ghit/2", [2]),
        ("", [4]),
    ]
    assert set(dispatcher.agents["a"].conversation("thread:teams/ghit/ghit/1").redelivered) == {3}
    # the sessions kept are shown before any run resumes them (status, the API, the TUI)
    loaded = [change for change in published if isinstance(change, SessionsLoaded)]
    assert [change.sessions for change in loaded] == [{"a": {"thread:teams/ghit/ghit/1": "s-1"}}]
    model = DashboardModel()
    model(ConfigApplied(config=Config(path=Path("x.toml"), agents=(agent,))))
    model(loaded[0])
    [shown] = model.view().agents
    assert [(c.conversation, c.session_id) for c in shown.conversations] == [
        ("thread:teams/ghit/ghit/1", "s-1")
    ]
    saved.release()
    assert saved.agents == {} and saved.dead == {} and saved.cursor == 4
