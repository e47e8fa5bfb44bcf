"""The notifications' outbox in state_dir (SPEC §13): written before anything is sent.

`state_dir/notify/outbox.jsonl`, owner-only, one JSON object a line, appended to:

- `{"add": {...}}` a notification for one target (an `Entry`), with its cause's key;
- `{"done": ID, "how": "sent"}` it left the outbox (`sent`, `dropped` by the bound,
  `expired`, or `gone` with its target);
- `{"state": {...}}` what `causes.Causes` must remember across a restart (the last wins);
- `{"keys": [...]}` the keys of notifications sent or dropped, kept by a compaction.

A line is written with one `write` and no fsync, on the loop (microseconds): a kill -9 keeps
it (the kernel has it); the fsync follows before the entry is sent (`sync_fd`), as the
journal's does. A torn last line (a crash mid-write) is skipped. At open, and when the file
has grown past `COMPACT_AFTER` records beyond what it holds, it is rewritten with only what
is still pending, the keys and the state (`compacted`, written off the loop, then
`install`ed).

One cause notifies once: a key seen (pending, sent or dropped) is never added again; the
last KEYS_KEPT keys are kept. The outbox is bounded: past MOST pending entries the oldest is
dropped, and counted (`dropped`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from ghitwork.system.files import make_dir, open_fd, write_all, write_atomic

MOST = 1000  # pending entries at most; past it the oldest is dropped
KEYS_KEPT = 10_000  # keys remembered (one cause notifies once)
COMPACT_AFTER = 2000  # records written beyond those a compaction would keep
NAME = "outbox.jsonl"


def target_id(url: str) -> str:
    """A target's name in the outbox: the URL holds its credentials, so it is not kept
    there; an entry whose target is no longer configured is dropped (`gone`)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class Entry(msgspec.Struct):
    """One notification for one target, as kept in the outbox."""

    id: int
    key: str
    target: str  # target_id(url)
    cause: str
    title: str
    body: str
    kind: str
    at: float
    agent: str | None = None
    index: int = 0  # its target's place among the [[notify]] tables (an edited URL keeps it)
    # In memory only: failed attempts since this start
    attempts: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "target": self.target,
            "cause": self.cause,
            "title": self.title,
            "body": self.body,
            "kind": self.kind,
            "at": self.at,
            "agent": self.agent,
            "index": self.index,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Entry:
        agent = data.get("agent")
        return cls(
            id=int(data["id"]),
            key=str(data["key"]),
            target=str(data["target"]),
            cause=str(data["cause"]),
            title=str(data["title"]),
            body=str(data["body"]),
            kind=str(data.get("kind") or "info"),
            at=float(data["at"]),
            agent=None if agent is None else str(agent),
            index=int(data.get("index") or 0),
        )


class Outbox:
    def __init__(self, directory: Path, most: int = MOST, keys_kept: int = KEYS_KEPT) -> None:
        self.dir = directory
        self.path = directory / NAME
        self.most = most
        self.keys_kept = keys_kept
        self.pending: dict[int, Entry] = {}  # by id, oldest first
        self._pending_keys: dict[str, int] = {}  # key -> its pending entries (one per target)
        self.keys: dict[str, None] = {}  # sent or dropped, oldest first (pending: in entries)
        self.state: dict[str, Any] = {}
        self.next_id = 1
        self.dropped = 0  # by the bound, since this start
        self.unreadable = 0  # lines skipped at open
        self.generation = 0  # grows with each record written (a compaction checks it)
        self._written = 0  # records in the file
        self._fd: int | None = None
        self._unsynced = False

    # -- reading
    def open(self) -> None:
        """Read what a previous instance left, and compact it (OSError when state_dir
        cannot be written). Nothing is created while there is nothing to keep."""
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                self._apply(json.loads(line))
            except (ValueError, TypeError, KeyError, AttributeError):
                self.unreadable += 1
        data, _ = self.compacted()
        write_atomic(self.path, data)
        self._written = data.count(b"\n")

    def _apply(self, record: Mapping[str, Any]) -> None:
        if "add" in record:
            entry = Entry.from_record(record["add"])
            self._hold(entry)
            self.next_id = max(self.next_id, entry.id + 1)
        elif "done" in record:
            entry_done = self._release(int(record["done"]))
            if entry_done is not None:
                self._remember(entry_done.key)
        elif "state" in record:
            self.state = dict(record["state"])
        elif "keys" in record:
            for key in record["keys"]:
                self._remember(str(key))
        else:
            raise ValueError("not an outbox record")

    # -- what it holds
    def seen(self, key: str) -> bool:
        return key in self.keys or key in self._pending_keys

    def highest(self, prefix: str) -> int | None:
        """The highest number N of the keys `PREFIX:N` seen (None: none)."""
        found = None
        for key in (*self.keys, *self._pending_keys):
            if key.startswith(prefix):
                with contextlib.suppress(ValueError):
                    number = int(key[len(prefix) :])
                    found = number if found is None else max(found, number)
        return found

    def _hold(self, entry: Entry) -> None:
        self.pending[entry.id] = entry
        self._pending_keys[entry.key] = self._pending_keys.get(entry.key, 0) + 1

    def _release(self, ident: int) -> Entry | None:
        entry = self.pending.pop(ident, None)
        if entry is not None:
            left = self._pending_keys.pop(entry.key, 1) - 1
            if left > 0:
                self._pending_keys[entry.key] = left
        return entry

    def waiting(self, target: str) -> Iterator[Entry]:
        """The target's pending entries, oldest first."""
        return (entry for entry in self.pending.values() if entry.target == target)

    def _remember(self, key: str) -> None:
        self.keys[key] = None
        while len(self.keys) > self.keys_kept:
            del self.keys[next(iter(self.keys))]

    # -- writing
    def add(self, entry: Entry) -> list[Entry]:
        """Keep `entry` (its id is given here), written before anything sends it; the
        entries the bound dropped to make room, oldest first. OSError when it cannot be
        written: it is kept in memory all the same (sent, but not across a crash)."""
        entry.id = self.next_id
        self.next_id += 1
        self._hold(entry)
        excess = len(self.pending) - self.most
        dropped = list(itertools.islice(self.pending.values(), max(excess, 0)))
        error: OSError | None = None
        try:
            self._write({"add": entry.record()})
        except OSError as failed:
            error = failed
        for oldest in dropped:
            self.dropped += 1
            self._release(oldest.id)
            self._remember(oldest.key)
            with contextlib.suppress(OSError):
                self._write({"done": oldest.id, "how": "dropped"})
        if error is not None:
            raise error
        return dropped

    def done(self, entry: Entry, how: str) -> None:
        """`entry` left the outbox: `sent`, `dropped`, `expired` or `gone`."""
        self._release(entry.id)
        self._remember(entry.key)
        self._write({"done": entry.id, "how": how})

    def save_state(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)
        self._write({"state": self.state})

    def _write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        if self._fd is None:
            make_dir(self.dir)
            self._fd = open_fd(self.path, os.O_WRONLY | os.O_APPEND)
        self.generation += 1
        write_all(self._fd, line.encode())
        self._written += 1
        self._unsynced = True

    def sync_fd(self) -> int | None:
        """A descriptor to fsync (and close) off the loop, when something written is not
        synced yet; None otherwise."""
        if self._fd is None or not self._unsynced:
            return None
        self._unsynced = False
        return os.dup(self._fd)

    # -- compaction
    def wants_compaction(self) -> bool:
        return self._written > COMPACT_AFTER + len(self.pending) + 2

    def compacted(self) -> tuple[bytes, int]:
        """The file as it would be rewritten now (what is pending, the keys, the state),
        and the generation it is of."""
        lines: list[dict[str, Any]] = []
        if self.keys:
            lines.append({"keys": list(self.keys)})
        if self.state:
            lines.append({"state": self.state})
        lines += [{"add": entry.record()} for entry in self.pending.values()]
        text = "".join(
            json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines
        )
        return text.encode(), self.generation

    def install(self, written: Path, generation: int, records: int) -> bool:
        """Put a compaction written (and fsynced) at `written` in place, unless something
        was written since it was made (then it is thrown away, to be made again)."""
        if generation != self.generation:
            with contextlib.suppress(OSError):
                written.unlink()
            return False
        os.replace(written, self.path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._written = records
        self._unsynced = False
        return True

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def write_compaction(path: Path, data: bytes) -> Path:
    """A compaction's file beside the outbox, fsynced (on a worker thread)."""
    temp = path.with_name(f".{path.name}.compact")
    fd = open_fd(temp, os.O_WRONLY | os.O_TRUNC)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return temp


def fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
