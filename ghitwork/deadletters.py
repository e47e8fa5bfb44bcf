"""Dead letters: batches that failed every attempt, kept in state_dir until handed back.

A dead letter is written to the journal (one record, fsynced) before its batch is let go, so
it survives restarts and kill -9. `ghit-work dead-letters` reads them without the lock, from
the snapshot and the journal, whether or not an instance runs.

Handing one back goes through a request file, never through the instance's files:

    state_dir/requests/redeliver-<time>-<pid>.json    {"ids": [3, 4]}

`ghit-work redeliver` writes it atomically (temp file, rename). The instance running on the
state_dir looks every second; with none running, the next start does. It consumes a request
by journaling one `redeliver` record per dead letter still in its list (fsynced), and only
then removes the file. A crash in between replays the request at the next start, where the
ids are no longer dead letters and are skipped: a dead letter is never lost, never delivered
twice, however many commands race with the instance. Until a request is consumed, listings
leave its dead letters out (they have been handed back).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ghitwork.archive import iso

REQUESTS = "requests"
POLL = 1.0  # seconds between looks at the requests dir: a redelivery lands within 2 s


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    agent: str
    events: tuple[dict[str, Any], ...]  # the whole event objects, in id order
    attempts: int
    exit_status: int | None  # None when the last attempt had none (killed, timed out, ...)
    error: str  # what the last attempt ended with: "exit 1", "timed out after 30m", ...
    time: float

    @property
    def event_ids(self) -> list[int]:
        return [int(event["id"]) for event in self.events]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "event_ids": self.event_ids,
            "attempts": self.attempts,
            "exit_status": self.exit_status,
            "error": self.error,
            "time": iso(self.time),
            "events": list(self.events),
        }

    def record(self) -> dict[str, Any]:
        """As journaled and snapshotted (time as a number)."""
        return {**self.to_json(), "time": self.time}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> DeadLetter:
        return cls(
            id=int(data["id"]),
            agent=str(data["agent"]),
            events=tuple(data["events"]),
            attempts=int(data["attempts"]),
            exit_status=data.get("exit_status"),
            error=str(data.get("error", "")),
            time=float(data["time"]),
        )


def request_redelivery(state_dir: Path, ids: list[int]) -> Path:
    """Write a request for the instance (running now, or the next to start)."""
    folder = state_dir / REQUESTS
    folder.mkdir(parents=True, exist_ok=True)
    name = f"redeliver-{time.time_ns()}-{os.getpid()}.json"
    tmp = folder / f".{name}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"ids": ids}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / name)
    return folder / name


@dataclass(frozen=True, slots=True)
class Request:
    path: Path
    ids: tuple[int, ...]


def pending_requests(state_dir: Path) -> list[Request]:
    """Requests not consumed yet, oldest first; unreadable ones are skipped (a writer's temp
    files start with a dot and are never read)."""
    folder = state_dir / REQUESTS
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(folder)
            if entry.name.startswith("redeliver-") and entry.name.endswith(".json")
        )
    except OSError:
        return []
    requests = []
    for name in names:
        path = folder / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ids = tuple(int(i) for i in data["ids"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        requests.append(Request(path, ids))
    return requests


def consumed(request: Request) -> None:
    with contextlib.suppress(FileNotFoundError):
        request.path.unlink()


# -- the commands: `ghit-work dead-letters` and `ghit-work redeliver`
def current(state_dir: Path) -> list[DeadLetter]:
    """The dead letters in state_dir, less those a request has already handed back."""
    from ghitwork.store import peek

    handed_back = {i for request in pending_requests(state_dir) for i in request.ids}
    saved = peek(state_dir)
    return [
        DeadLetter.from_record(saved.dead[i]) for i in sorted(saved.dead) if i not in handed_back
    ]


def list_command(state_dir: Path, as_json: bool, out: TextIO) -> int:
    letters = current(state_dir)
    if as_json:
        for letter in letters:
            print(json.dumps(letter.to_json(), ensure_ascii=False), file=out)
        return 0
    if not letters:
        print(f"no dead letters in {state_dir}", file=out)
        return 0
    for letter in letters:
        ids = letter.event_ids
        exit_status = "-" if letter.exit_status is None else str(letter.exit_status)
        print(
            f"{letter.id}\t{letter.agent}\t{iso(letter.time)}\tevents {_ranges(ids)} ({len(ids)})"
            f"\t{letter.attempts} attempt{'s' if letter.attempts != 1 else ''}"
            f"\texit {exit_status}\t{letter.error}",
            file=out,
        )
    return 0


def redeliver_command(
    state_dir: Path, ids: Sequence[int], agent: str | None, out: TextIO, err: TextIO
) -> int:
    """Request the redelivery of `ids` (all when empty), limited to `agent`'s if given."""
    from ghitwork.config import ConfigError
    from ghitwork.store import running_pid

    letters = {letter.id: letter for letter in current(state_dir)}
    for ident in ids:
        if ident not in letters:
            raise ConfigError(
                str(state_dir),
                None,
                f"no dead letter {ident} (ghit-work dead-letters lists them; one that was "
                "handed back already is no longer listed)",
            )
    chosen = [letters[i] for i in ids] if ids else list(letters.values())
    if agent is not None:
        for letter in chosen:
            if letter.agent != agent:
                print(
                    f"dead letter {letter.id} is {letter.agent}'s, not {agent}'s: left out",
                    file=err,
                )
        chosen = [letter for letter in chosen if letter.agent == agent]
    if not chosen:
        print("no dead letters to hand back", file=out)
        return 0
    request_redelivery(state_dir, [letter.id for letter in chosen])
    pid = running_pid(state_dir)
    when = (
        f"ghit-work (pid {pid}) delivers them within 2 s"
        if pid is not None
        else "no ghit-work runs on this state_dir: the next start delivers them first"
    )
    count = sum(len(letter.events) for letter in chosen)
    names = ", ".join(str(letter.id) for letter in chosen)
    print(f"handed back dead letter(s) {names} ({count} event(s)); {when}", file=out)
    return 0


def _ranges(ids: Sequence[int]) -> str:
    from ghitwork.status import id_ranges

    return id_ranges(ids)
