"""Requests to the instance on a state dir: dead letters handed back (`redeliver`), agents
paused and resumed (`pause`, `resume`: SPEC §13), all through files.

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
leave its dead letters out (they have been handed back). A request that cannot be read is
moved aside by the instance (`*.bad`) and reported once: its dead letters stay listed.

Pause and resume go the same way (`pause-<time>-<pid>.json`, `resume-...`): the instance
applies each in the order they were written, journals the outcome (fsynced), then removes
the file; at a start they are applied before any saved event is delivered.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from ghitwork.model.deadletter import DeadLetter
from ghitwork.persist.lock import _reason
from ghitwork.system.files import make_dir, move_aside, write_atomic

REQUESTS = "requests"
POLL = 1.0  # seconds between looks at the requests dir: a redelivery lands within 2 s


def request_redelivery(state_dir: Path, ids: list[int]) -> Path:
    """Write a request for the instance (running now, or the next to start), 0600."""
    return request_control(state_dir, "redeliver", {"ids": ids})


def request_control(state_dir: Path, kind: str, payload: dict[str, object]) -> Path:
    """A `pause`, `resume` or `redeliver` request, 0600."""
    folder = state_dir / REQUESTS
    make_dir(folder)
    path = folder / f"{kind}-{time.time_ns()}-{os.getpid()}.json"
    write_atomic(path, json.dumps(payload).encode())
    return path


class Control(msgspec.Struct, frozen=True):
    path: Path
    kind: str  # "pause" or "resume"
    data: dict[str, object]


CONTROLS = ("pause", "resume")


def listing(state_dir: Path) -> list[str]:
    """The names in state_dir's requests folder (none when it is missing or unreadable):
    the running instance looks once a second, and hands the one listing to both readers."""
    try:
        return [entry.name for entry in os.scandir(state_dir / REQUESTS)]
    except OSError:
        return []


def pending_controls(
    state_dir: Path, report: Callable[[str], None], names: list[str] | None = None
) -> list[Control]:
    """Pause and resume requests not applied yet, in the order they were written; one that
    cannot be read is moved aside as `*.bad` and reported. `names`: the folder's `listing`,
    when already made."""
    folder = state_dir / REQUESTS
    found = [
        (int(parts[1]), name, parts[0])
        for name in (listing(state_dir) if names is None else names)
        if name.endswith(".json")
        and (parts := name.split("-"))[0] in CONTROLS
        and len(parts) == 3
        and parts[1].isdigit()
    ]
    controls = []
    for _, name, kind in sorted(found):
        path = folder / name
        try:
            data = json.loads(path.read_bytes())
            if not isinstance(data, dict) or not isinstance(data.get("agents", []), list):
                raise ValueError("not a request object")
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as error:
            _unreadable(path, error, report, f"ask again with `ghit-work {kind}`")
            continue
        controls.append(Control(path, kind, data))
    return controls


class Request(msgspec.Struct, frozen=True):
    path: Path
    ids: tuple[int, ...]


def pending_requests(
    state_dir: Path, report: Callable[[str], None] | None = None, names: list[str] | None = None
) -> list[Request]:
    """Requests not consumed yet, oldest first (a writer's temp files start with a dot and
    are never read). One that cannot be read is left out; given `report` (the running
    instance, which owns the requests), it is also moved aside as `*.bad` and reported,
    once; the commands beside it only leave it out. `names`: the folder's `listing`, when
    already made."""
    folder = state_dir / REQUESTS
    wanted = sorted(
        name
        for name in (listing(state_dir) if names is None else names)
        if name.startswith("redeliver-") and name.endswith(".json")
    )
    requests = []
    for name in wanted:
        path = folder / name
        try:
            data = json.loads(path.read_bytes())
            ids = tuple(_id(i) for i in data["ids"])
        except FileNotFoundError:
            continue  # consumed meanwhile
        except (OSError, ValueError, KeyError, TypeError) as error:
            if report is not None:
                hint = (
                    "the dead letters it names stay listed by `ghit-work dead-letters`; "
                    "hand them back again with `ghit-work redeliver`"
                )
                _unreadable(path, error, report, hint)
            continue
        requests.append(Request(path, ids))
    return requests


# Unreadable requests that could not be moved aside: reported once, then left out quietly.
_UNMOVABLE: set[Path] = set()


def _unreadable(path: Path, error: Exception, report: Callable[[str], None], hint: str) -> None:
    """A request that cannot be read: moved aside as `*.bad` and reported, once."""
    if path in _UNMOVABLE:
        return
    where = move_aside(path, "bad")
    if not where.startswith("moved"):
        _UNMOVABLE.add(path)  # reported now, not again every second
    report(f"{path}: unreadable ({_why(error)}); {where}: {hint}")


def _id(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{value!r} is not a dead letter id")


def _why(error: Exception) -> str:
    return f"no {error} in it" if isinstance(error, KeyError) else _reason(error)


def consumed(request: Request | Control) -> None:
    with contextlib.suppress(FileNotFoundError):
        request.path.unlink()


def current(state_dir: Path) -> list[DeadLetter]:
    """The dead letters in state_dir, less those a request has already handed back."""
    from ghitwork.persist.store import peek

    handed_back = {i for request in pending_requests(state_dir) for i in request.ids}
    saved = peek(state_dir)
    return [
        DeadLetter.from_record(saved.dead[i]) for i in sorted(saved.dead) if i not in handed_back
    ]
