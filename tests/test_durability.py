"""The state dir when the machine misbehaves (issue 21): a disk that fills, a state dir gone
read-only, a lock file deleted, unreadable files; and what ghit-work leaves readable to others.

The disk is a real one: a 2 MB tmpfs (these tests need root to mount it; they are skipped,
saying why, where that is impossible).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import Running, Setup, event, fill, ghit_work, poll, write_events
from rxfakes import agent_config

from ghitwork.bus.changes import ConfigApplied
from ghitwork.config.model import Config
from ghitwork.observe import snapshot, statusfile
from ghitwork.observe.dashboard import DashboardModel
from ghitwork.persist import requests as deadletters
from ghitwork.persist.store import running_pid

# Records its batch, then holds while the file $HOLD exists (a run in progress on demand).
HOLDING_AGENT = """\
import json, os, sys, time
prompt = sys.stdin.read()
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"agent": os.environ["GHIT_WORK_AGENT"], "prompt": prompt}) + "\\n")
while os.path.exists(os.environ["HOLD"]):
    time.sleep(0.02)
with open(os.environ["RECORD"] + ".end", "a") as f:
    f.write(prompt + "\\n")
"""


def holding(setup: Setup, state_dir: Path, follow: bool = True) -> Path:
    """A config whose agent `a` holds its run while the returned file exists."""
    script = setup.path / "holding.py"
    script.write_text(HOLDING_AGENT)
    hold = setup.path / "hold"
    setup.write_config(
        {
            "a": {
                "cmd": [sys.executable, str(script)],
                "env": {"RECORD": str(setup.records), "HOLD": str(hold)},
            }
        },
        tail=["--follow"] if follow else [],
        state_dir=str(state_dir),
    )
    return hold


def journaled(state_dir: Path, strict: bool = False) -> list[dict[str, object]]:
    """Every record of the journal; `strict`: all of them whole (no torn record anywhere).
    Not strict, a line being written as it is read makes it look empty (a poll looks again)."""
    journals = list(state_dir.glob("journal-*.jsonl"))
    if len(journals) != 1:  # none yet, or two for the instant of a compaction
        assert not strict, journals
        return []
    [journal] = journals
    try:
        return [json.loads(line) for line in journal.read_bytes().splitlines()]
    except ValueError:
        if strict:
            raise
        return []


def event_ids(records: list[dict[str, object]]) -> set[int]:
    return {int(r["e"]["id"]) for r in records if isinstance(r.get("e"), dict)}  # type: ignore[index]


def done_ids(records: list[dict[str, object]]) -> set[int]:
    return {int(i) for r in records if "done" in r for i in r["ids"]}  # type: ignore[attr-defined]


def test_a_full_disk_then_kill_9_loses_no_event(setup: Setup, disk: Path) -> None:
    """Issue 21 item 2: the journal write of events 10 and 11 fails on a full disk while
    their run starts (11 may be read after 10's run started: it then waits for the next);
    the space comes back, 12 and 13 are journaled, ghit-work is killed with -9 in the middle
    of the run. The restart delivers 10 and 11 again (and 12, 13)."""
    state_dir = disk / "state"
    hold = holding(setup, state_dir)
    write_events(setup.events, [event(1), event(2)])
    with Running(setup.path) as daemon:
        poll(lambda: done_ids(journaled(state_dir)) >= {1, 2}, what="events 1 and 2 done")
        filler = fill(disk)
        hold.touch()
        big = "x" * 20000  # each of them spans pages: the write stops part-way
        write_events(setup.events, [event(10, title=big), event(11, title=big)])
        poll(lambda: 10 in setup.delivered("a"), what="the run of 10 (and 11, if read with it)")
        daemon.wait_for("No space left on device")
        filler.unlink()
        write_events(setup.events, [event(12)])
        poll(lambda: 12 in event_ids(journaled(state_dir)), what="event 12 journaled")
        write_events(setup.events, [event(13)])
        poll(lambda: 13 in event_ids(journaled(state_dir)), what="event 13 journaled")
        assert event_ids(journaled(state_dir, strict=True)) == {1, 2, 10, 11, 12, 13}
        daemon.process.kill()
        daemon.wait()
        text = daemon.text
    assert f"state_dir {state_dir}: cannot write journal-1.jsonl: No space left on device" in text
    assert text.count("cannot write journal-1.jsonl") == 1, text  # once, not at every write
    assert "written again; the journal has every change" in text
    hold.unlink()
    poll(lambda: (setup.path / "records.jsonl.end").exists(), what="the held run to end")
    holding(setup, state_dir, follow=False)
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    after = [run["prompt"].split() for run in setup.runs()][-1]
    assert sorted(int(i) for i in after) == [10, 11, 12, 13]


def test_a_start_on_a_full_disk_says_so_and_exits(setup: Setup, disk: Path) -> None:
    """Issue 21 item 3: no hang; one line naming the file and the error, nothing started,
    nothing lost once there is space again."""
    state_dir = disk / "state"
    holding(setup, state_dir, follow=False)
    write_events(setup.events, [event(1)])
    assert ghit_work("--drain", cwd=setup.path).returncode == 0
    write_events(setup.events, [event(2)])
    filler = fill(disk)
    result = ghit_work("--drain", cwd=setup.path, timeout=20)
    assert result.returncode != 0
    assert f"state_dir {state_dir}: cannot write state.json: No space left on device" in (
        result.stderr
    )
    assert setup.delivered("a") == [1]
    filler.unlink()
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert setup.delivered("a") == [1, 2]


def test_a_save_that_fails_at_the_stop_is_not_claimed_and_loses_nothing(
    setup: Setup, disk: Path
) -> None:
    """Issue 21 item 12: the stop does not claim it saved what it could not (the disk
    filled); the events the journal holds are all delivered at the next start."""
    state_dir = disk / "state"
    hold = holding(setup, state_dir)
    hold.touch()
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(lambda: setup.delivered("a") == [1], what="the run of 1")
        # Big: a page that a status.json rewrite frees as the disk fills cannot hold them.
        big = "x" * 20000
        write_events(setup.events, [event(2, title=big), event(3, title=big)])
        poll(lambda: 3 in event_ids(journaled(state_dir)), what="events 2 and 3 journaled")
        filler = fill(disk)
        daemon.signal(signal.SIGTERM)
        daemon.wait()
        text = daemon.text
    filler.unlink()
    assert f"state_dir {state_dir}: cannot write state.json: No space left on device" in text
    assert "saved 3 undelivered" not in text
    hold.unlink()
    holding(setup, state_dir, follow=False)
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert sorted(setup.delivered("a")[1:]) == [1, 2, 3]


def test_deleting_the_lock_file_lets_no_second_instance_start(setup: Setup) -> None:
    """Issue 21 item 4: the flock is on the state dir itself."""
    setup.write_config({"a": {}}, tail=["--follow"])
    state_dir = setup.path / ".ghit-work"
    with Running(setup.path) as first:
        pid = first.process.pid
        poll(lambda: running_pid(state_dir) == pid, what="the first instance")
        (state_dir / "lock").unlink()
        assert running_pid(state_dir) == pid  # `status` and `dead-letters` still find it
        second = ghit_work(cwd=setup.path, timeout=20)
        assert second.returncode == 1
        assert f"state_dir {state_dir} is in use by another ghit-work (pid {pid})" in (
            second.stderr
        )
        assert first.process.poll() is None


def test_state_dir_and_logdir_are_owner_only_whatever_the_umask(setup: Setup) -> None:
    """Issue 21 item 11: every directory ghit-work made is 0700, every file it wrote 0600,
    even with umask 0; a directory that was there already keeps its mode."""
    given = setup.path / "given"
    given.mkdir(mode=0o750)
    given.chmod(0o750)  # an image's, with group bits (the group-0 convention)
    state_dir = given / "state"
    logdir = setup.path / "logs" / "a"
    setup.write_config({"a": {"logdir": str(logdir)}}, state_dir=str(state_dir))
    write_events(setup.events, [event(1), event(2)])
    result = ghit_work("--drain", cwd=setup.path, umask=0)
    assert result.returncode == 0, result.stderr
    assert setup.delivered("a") == [1, 2]
    made = [state_dir, setup.path / "logs"]
    modes = {path: path.stat().st_mode & 0o7777 for top in made for path in [top, *top.rglob("*")]}
    assert {path.name for path in modes} >= {
        "state",
        "lock",
        "state.json",
        "status.json",
        "children",
        "logs",
        "a",
    }
    assert len([p for p in modes if p.parent == logdir]) == 4  # prompt, stdout, stderr, json
    wrong = {
        str(path): oct(mode)
        for path, mode in modes.items()
        if mode != (0o700 if path.is_dir() else 0o600)
    }
    assert wrong == {}
    assert given.stat().st_mode & 0o7777 == 0o750


def test_an_unreadable_redelivery_request_is_reported_once_and_moved_aside(
    tmp_path: Path,
) -> None:
    old = os.umask(0)
    try:
        good = deadletters.request_redelivery(tmp_path, [3])
    finally:
        os.umask(old)
    assert good.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "requests").stat().st_mode & 0o777 == 0o700
    bad = tmp_path / "requests" / "redeliver-1-1.json"
    bad.write_text('{"ids": [1, ')
    wrong = tmp_path / "requests" / "redeliver-2-1.json"
    wrong.write_text('{"ids": ["x"]}')
    assert [r.ids for r in deadletters.pending_requests(tmp_path)] == [(3,)]
    assert bad.exists()  # a command beside the instance only leaves it out
    reports: list[str] = []
    for _ in range(3):
        requests = deadletters.pending_requests(tmp_path, report=reports.append)
        assert [r.path for r in requests] == [good]
    assert len(reports) == 2
    assert reports[0].startswith(f"{bad}: unreadable (")
    assert f"moved aside as {bad}.bad: the dead letters it names stay listed" in reports[0]
    assert reports[1].startswith(f"{wrong}: unreadable ('x' is not a dead letter id)")
    assert {p.name for p in (tmp_path / "requests").iterdir()} == {
        "redeliver-1-1.json.bad",
        "redeliver-2-1.json.bad",
        good.name,
    }


def test_status_json_write_errors_are_reported_once_and_an_unreadable_one_moved_aside(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"  # missing: every write fails
    model = DashboardModel()
    reports: list[tuple[str, str]] = []
    snapshots = snapshot.Snapshots(
        model, lambda: 5, state_dir, report=lambda level, m: reports.append((level, m))
    )
    for _ in range(3):
        snapshots.write_if_changed()
    assert reports == [
        (
            "error",
            f"state_dir {state_dir}: cannot write status.json: No such file or directory; "
            "`ghit-work status` shows an older snapshot (or none) until it can",
        )
    ]
    state_dir.mkdir()
    snapshots.write_if_changed()
    assert reports[1:] == [("info", f"state_dir {state_dir}: status.json written again")]
    path = state_dir / "status.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert statusfile.read(state_dir)["stream"]["cursor"] == 5  # type: ignore[index]

    path.write_text('{"version": "0.1", "stre')  # not what ghit-work writes, but it happens
    told: list[str] = []
    assert statusfile.read(state_dir, report=told.append) is None
    assert statusfile.read(state_dir, report=told.append) is None
    assert told == [
        f"{path}: unreadable (Unterminated string starting at: line 1 column 20 (char 19)); "
        f"moved "
        f"aside as {path}.bad; the running ghit-work writes a new one within a second"
    ]
    snapshots.write_if_changed()  # nothing changed, but the file is gone: written again
    assert statusfile.read(state_dir) is not None


def test_a_large_status_json_is_written_a_slice_at_a_time_the_loop_turning_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status.json of many agents is written SLICE at a time (observe/snapshot.py): what
    else the loop has to do runs between two slices, readers see the old file until the new
    one is whole, and the stop's write (`now`) takes over one under way."""
    monkeypatch.setattr(snapshot, "SLICE", 0.0)  # each agent's piece a turn of its own
    model = DashboardModel()
    agents = tuple(agent_config(f"a{n}") for n in range(6))
    model(ConfigApplied(config=Config(path=Path("x.toml"), agents=agents)))
    cursor = [5]
    snapshots = snapshot.Snapshots(model, lambda: cursor[0], tmp_path)
    path = tmp_path / "status.json"

    def under_way() -> bool:  # a write in slices, not yet in place
        return snapshots._building is not None

    async def scenario() -> list[str]:
        seen: list[str] = []
        loop = asyncio.get_running_loop()
        snapshots.write_if_changed()
        loop.call_soon(lambda: seen.append("other work" if not path.exists() else "late"))
        while under_way():
            await asyncio.sleep(0)
        seen.append(str(statusfile.read(tmp_path)["stream"]["cursor"]))  # type: ignore[index]
        cursor[0] = 9  # changed: the next write starts, and the stop's write takes over
        snapshots._next = 0.0
        snapshots.write_if_changed()
        assert under_way()
        snapshots.write_if_changed(now=True)
        seen.append(str(statusfile.read(tmp_path)["stream"]["cursor"]))  # type: ignore[index]
        await asyncio.sleep(0)  # the first write's next slice finds it given up
        await asyncio.sleep(0)
        return seen

    assert asyncio.run(scenario()) == ["other work", "5", "9"]
    document = statusfile.read(tmp_path)
    assert document is not None and [a["name"] for a in document["agents"]] == [
        f"a{n}" for n in range(6)
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temp file left


def test_the_api_gets_a_large_snapshot_made_a_slice_at_a_time_and_shares_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `http` (`serving`), a request for /api/v1/state does not make the snapshot at
    once either: it is made SLICE at a time, the loop turning between, and written to
    status.json too; requests meanwhile wait for the same one, and get the one kept until
    something changed and it is FRESH seconds old. The stop's write takes over one under
    way, and answers its requests."""
    monkeypatch.setattr(snapshot, "SLICE", 0.0)
    model = DashboardModel()
    agents = tuple(agent_config(f"a{n}") for n in range(6))
    model(ConfigApplied(config=Config(path=Path("x.toml"), agents=agents)))
    cursor = [5]
    snapshots = snapshot.Snapshots(model, lambda: cursor[0], tmp_path)
    snapshots.serving = True
    path = tmp_path / "status.json"

    async def scenario() -> list[object]:
        seen: list[object] = []
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(snapshots.state())
        second = asyncio.ensure_future(snapshots.state())
        await asyncio.sleep(0)
        loop.call_soon(lambda: seen.append(snapshots._building is not None))  # between
        one, two = await asyncio.gather(first, second)
        seen.append(one is two)
        seen.append(path.read_bytes() == one)
        seen.append(json.loads(one)["stream"]["cursor"])
        seen.append(await snapshots.state() is one)  # nothing changed: the one kept
        cursor[0] = 7
        seen.append(await snapshots.state() is one)  # changed, but not FRESH seconds ago
        monkeypatch.setattr(snapshot, "FRESH", 0.0)
        third = asyncio.ensure_future(snapshots.state())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert snapshots._building is not None
        cursor[0] = 9
        snapshots.write_if_changed(now=True)  # the stop's write: at once, and it answers
        body = await third
        seen.append(json.loads(body)["stream"]["cursor"])
        seen.append(path.read_bytes() == body)
        return seen

    assert asyncio.run(scenario()) == [True, True, True, 5, True, True, 9, True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]  # no temp file left
