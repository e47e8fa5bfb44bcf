"""One snapshot of what the instance is doing, for everything that is not the TUI's screen.

The TUI draws `DashboardModel.view()`; the status page, `GET /api/v1/state` and
`ghit-work status` read the JSON snapshot made here from the same view, so all three tell the
same story. The running instance writes it to `state_dir/status.json` (temp file and rename,
at most once a second, only when something changed), so `ghit-work status` works without
`http`.

What it carries is public to whoever may read the state dir or reach the port: states,
event ids and titles, counts, costs, session ids, status lines. Never a prompt, an
environment or a secret: the view it is built from is redacted by the shared Redactor
(redact.py), and every agent's `queue` is current (dashboard.py).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from ghitwork import __version__
from ghitwork.bus.changes import AgentState
from ghitwork.model.formatting import iso
from ghitwork.model.results import RunResult
from ghitwork.model.usage import Usage
from ghitwork.observe.dashboard import AgentView, ConversationView, DashboardModel, View
from ghitwork.observe.view import DAYS
from ghitwork.persist.saved import dumps
from ghitwork.system.files import AtomicFile

FILE = "status.json"
REFRESH = 1.0  # seconds: the snapshot file is rewritten at most this often
FRESH = 0.25  # seconds: the API serves a snapshot at most this old (a rebuild costs the loop)
SHARE = 0.05  # of the loop's time, at most, spent rewriting status.json (a large one waits)
SLICE = 0.001  # seconds: a large status.json is written this much at a time, between turns
RECENT_EVENTS = 50
ATTENTION = 50


def _run(run: RunResult) -> dict[str, Any]:
    usage = run.usage
    return {
        "start": iso(run.started),
        "end": iso(run.ended),
        "exit_status": run.returncode,
        "outcome": run.outcome,
        "event_ids": list(run.event_ids),
        "attempt": run.attempt,
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "cost_usd": round(usage.cost_usd, 6) if usage else None,
        "conversation": run.conversation,
    }


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
        "cost_usd": round(usage.cost_usd, 6),
    }


def _days(days: Sequence[tuple[str, Usage]], now: float) -> list[dict[str, Any]]:
    """The last DAYS calendar days (the instance's time zone), oldest first, today last,
    each with its usage (0 on a day without any)."""
    today = date.fromtimestamp(now)
    kept = dict(days)
    shown = []
    for back in range(DAYS - 1, -1, -1):
        day = (today - timedelta(days=back)).isoformat()
        shown.append({"day": day, **_usage(kept.get(day, Usage()))})
    return shown


def _question(conversation: ConversationView) -> str | None:
    """What a conversation in needs-input asks (its last run printed it), if it said."""
    if conversation.state is not AgentState.NEEDS_INPUT:
        return None
    last = conversation.last_run
    if last is not None and last.needs_input:
        return last.question
    return conversation.problem or None  # waiting since before a restart: state_dir kept it


def _conversation(conversation: ConversationView) -> dict[str, Any]:
    """One conversation of an agent (SPEC §12)."""
    last = conversation.last_run
    return {
        "conversation": conversation.conversation,
        "state": conversation.shown_state,
        "since": iso(conversation.since),
        "queue": conversation.queue,
        "batch": list(conversation.batch_ids),
        "attempt": conversation.attempt,
        "retry_at": iso(conversation.due) if conversation.due is not None else None,
        "session_id": conversation.session_id,
        "problem": conversation.problem,
        "workspace": conversation.workspace or None,
        "usage": _usage(conversation.usage),
        "last_run": _run(last) if last is not None else None,
        "question": _question(conversation),
    }


def _agent(agent: AgentView, now: float) -> dict[str, Any]:
    config = agent.config
    return {
        "name": agent.name,
        "state": agent.shown_state,
        "since": iso(agent.since),
        "queue": agent.queue,
        "batch": list(agent.batch_ids),
        "attempt": agent.attempt,
        "attempts": config.run_attempts if config else None,
        "retry_at": iso(agent.due) if agent.due is not None else None,
        "session_id": agent.session_id,
        "problem": agent.problem,
        "usage": {
            **_usage(agent.usage_total),
            "cost_today_usd": round(agent.usage_today.cost_usd, 6),
        },
        "dead_letters": len(agent.dead_letters),
        "runs": [_run(run) for run in agent.runs],
        "conversations": [_conversation(c) for c in agent.conversations],
        "days": _days(agent.days, now),
    }


def build(view: View, cursor: int | None, now: float, agents: bool = True) -> dict[str, Any]:
    """The snapshot of one view (the shape of `status --json` and `/api/v1/state`); with
    `agents` false, its `agents` list left empty (`pieces` writes them one at a time)."""
    return {
        "version": __version__,
        "pid": os.getpid(),
        "time": iso(now),
        "config": view.config_path,
        "limit": view.limit,
        "stream": {
            "state": view.health,
            "cursor": cursor,
            "retry_at": iso(view.retry_at) if view.retry_at is not None else None,
            "events_seen": view.events_seen,
        },
        "cost_today_usd": round(view.cost_today, 6),
        "agents": [_agent(agent, now) for agent in view.agents] if agents else [],
        "attention": list(view.attention[-ATTENTION:]),
        "events": [
            {
                "id": event.id,
                "kind": event.kind,
                "actor": event.actor,
                "scopes": list(event.scopes),
                "title": event.title,
                "agents": list(event.agents),
            }
            for event in view.events[-RECENT_EVENTS:]
        ],
    }


def pieces(view: View, cursor: int | None, now: float) -> Iterator[bytes]:
    """`build`'s document as JSON, key for key, in pieces of an agent each, so that it is
    written without being held whole: after a restart each agent's batch is its whole queue,
    and `batch` lists every event id of it (2 MB for 100,000 queued events)."""
    document = build(view, cursor, now, agents=False)
    keys = list(document)
    at = keys.index("agents")
    yield dumps({key: document[key] for key in keys[:at]})[:-1] + b',"agents":['
    for index, agent in enumerate(view.agents):
        yield (b"," if index else b"") + dumps(_agent(agent, now))
    after = {key: document[key] for key in keys[at + 1 :]}
    yield b"]," + dumps(after)[1:] if after else b"]}"


_Key = tuple[int, int | None]  # (the model's version, the cursor): what the snapshot shows


class _Build:
    """One snapshot being made a slice at a time: written to status.json (`file`, when it is
    to be rewritten and can be) and kept whole (`kept`, when the API serves it), for whoever
    awaits it (`waiters`)."""

    def __init__(
        self, key: _Key, data: Iterator[bytes], file: AtomicFile | None, keep: bool
    ) -> None:
        self.key, self.data, self.file = key, data, file
        self.kept: list[bytes] | None = [] if keep else None
        self.waiters: list[asyncio.Future[bytes]] = []
        self.started = time.monotonic()
        self.spent = 0.0  # the loop's time its slices took

    def failed(self, error: BaseException) -> None:
        """A piece could not be made (a bug): no file, and the waiters get the error."""
        if self.file is not None:
            self.file.abort()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(error)


class Snapshots:
    """Keeps the snapshot: written to state_dir when it changed (at most once per REFRESH),
    and, when the HTTP API serves it (`serving`), kept and made when asked."""

    def __init__(
        self,
        model: DashboardModel,
        cursor: Callable[[], int | None],
        state_dir: Path,
        clock: Callable[[], float] = time.time,
        report: Callable[[str, str], None] | None = None,
    ) -> None:
        """`report(level, message)` tells the operator that status.json cannot be written
        (once per distinct error), and when it is written again."""
        self.model = model
        self.cursor = cursor
        self.path = state_dir / FILE
        self.clock = clock
        self.report = report
        self._written: _Key | None = None
        self._failing: str | None = None  # the write error reported, until a write succeeds
        self._cached: tuple[_Key, float, bytes] | None = None
        self._next = 0.0  # no write before (time.monotonic), however much changed
        self._building: _Build | None = None  # a snapshot being made in slices
        # The HTTP API serves the snapshot, kept between changes; without it status.json is
        # written in pieces and nothing is kept.
        self.serving = False

    def _key(self) -> _Key:
        return (self.model.version, self.cursor())

    async def state(self) -> bytes:
        """The API's body: the one kept, while nothing changed or it is younger than FRESH
        (however many clients poll, making it costs the loop a few times a second at most);
        else made SLICE at a time like status.json, and written there too, the loop
        dispatching between two slices. Requests meanwhile wait for the same one."""
        key = self._key()
        cached = self._cached
        if cached is not None and (cached[0] == key or time.monotonic() - cached[1] < FRESH):
            return cached[2]
        building = self._building
        if building is None or building.kept is None:
            self._give_up()
            building = self._start(key, key == self._written)  # gone: the tick writes it
            asyncio.get_running_loop().call_soon(self._slice, building, False)
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        building.waiters.append(waiter)
        return await waiter

    def write_if_changed(self, now: bool = False) -> None:
        """Rewrite status.json (0600) if something changed, or if it is gone (a reader moved
        an unreadable one aside). A write that fails is reported once per distinct error,
        and tried again at the next call.

        A large snapshot is written SLICE at a time, the loop taking its other work (a read
        from tail-events, a run to start) between two slices: at 1,000 conversations one
        took 5-25 ms, during which new events waited (`live.py`'s scale p99). It is built
        from one view (immutable), so its slices all tell the same moment. It is also
        rewritten less often than at every call: the next write waits until the loop has
        spent at most `SHARE` of its time on them (a catch-up into 19,000 conversations makes
        a 150 ms snapshot, rewritten every 3 s instead of every second). `now`: at once,
        whatever it cost (the stop's last write); a file gone is written at once too."""
        key = self._key()
        there = self.path.exists()
        if key == self._written and there:
            return
        if there and not now and time.monotonic() < self._next:
            return
        if self._building is not None and not now:
            return  # it ends within a few turns of the loop
        waiters = self._give_up()  # the stop's write takes over, and its waiters
        building = self._start(key, False)
        building.waiters = waiters
        self._slice(building, now)

    def _give_up(self) -> list[asyncio.Future[bytes]]:
        """The snapshot under way given up (its temp file removed); who waits for it."""
        building, self._building = self._building, None
        if building is None:
            return []
        if building.file is not None:
            building.file.abort()
        return building.waiters

    def _start(self, key: _Key, written: bool) -> _Build:
        """A snapshot of now, to be made (`written`: status.json already shows it)."""
        cached = self._cached
        if self.serving and cached is not None and cached[0] == key:
            data: Iterator[bytes] = iter((cached[2],))
        else:
            data = pieces(self.model.view(), key[1], self.clock())
        file = None
        if not written:
            try:
                file = AtomicFile(self.path, sync=False)
            except OSError as error:
                self._failed(error)
        building = self._building = _Build(key, data, file, self.serving)
        return building

    def _slice(self, building: _Build, now: bool) -> None:
        if self._building is not building:
            return  # given up for a write at once
        began = time.monotonic()
        try:
            loop = None if now else asyncio.get_running_loop()
        except RuntimeError:  # no loop (a command, a test): all at once
            loop = None
        try:
            for piece in building.data:
                self._add(building, piece)
                if building.file is None and building.kept is None:
                    break  # the file failed, and nothing else wants it
                if loop is not None and time.monotonic() - began >= SLICE:
                    building.spent += time.monotonic() - began
                    loop.call_soon(self._slice, building, now)
                    return
        except BaseException as error:
            self._building = None
            building.failed(error)
            raise
        self._building = None
        building.spent += time.monotonic() - began
        self._finish(building)

    def _add(self, building: _Build, piece: bytes) -> None:
        if building.kept is not None:
            building.kept.append(piece)
        if building.file is not None:
            try:
                building.file.write(piece)
            except OSError as error:  # the file removed its temp file
                building.file = None
                self._failed(error)

    def _finish(self, building: _Build) -> None:
        if building.kept is not None:
            body = b"".join(building.kept)
            self._cached = (building.key, building.started, body)
            for waiter in building.waiters:
                if not waiter.done():  # its request may have gone
                    waiter.set_result(body)
        if building.file is None:
            return
        try:
            building.file.commit()
        except OSError as error:
            self._failed(error)
            return
        if self._failing is not None:
            self._failing = None
            if self.report is not None:
                self.report("info", f"state_dir {self.path.parent}: {FILE} written again")
        self._written = building.key
        self._next = building.started + building.spent / SHARE

    def _failed(self, error: OSError) -> None:
        problem = (
            f"state_dir {self.path.parent}: cannot write {FILE}: {error.strerror or error}; "
            "`ghit-work status` shows an older snapshot (or none) until it can"
        )
        if problem != self._failing:
            self._failing = problem
            if self.report is not None:
                self.report("error", problem)
