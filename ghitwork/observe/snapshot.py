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
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TextIO

from ghitwork import __version__
from ghitwork.bus.changes import AgentState
from ghitwork.model.formatting import id_ranges, iso
from ghitwork.model.results import RunResult
from ghitwork.model.usage import Usage
from ghitwork.observe.dashboard import AgentView, ConversationView, DashboardModel, View
from ghitwork.observe.view import DAYS, OWN_NAME
from ghitwork.persist.saved import dumps
from ghitwork.system.files import AtomicFile, move_aside

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


class Snapshots:
    """Keeps the snapshot: built when asked (the HTTP API), written to state_dir when it
    changed (at most once per REFRESH)."""

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
        self._written: tuple[int, int | None] | None = None
        self._failing: str | None = None  # the write error reported, until a write succeeds
        self._cached: tuple[tuple[int, int | None], float, bytes] | None = None
        self._next = 0.0  # no write before (time.monotonic), however much changed
        self._under_way: AtomicFile | None = None  # a write in slices, not yet in place
        # The HTTP API serves `body()`, kept between changes; without it status.json is
        # written in pieces and nothing is kept.
        self.serving = False

    def current(self) -> dict[str, Any]:
        return build(self.model.view(), self.cursor(), self.clock())

    def body(self, fresh: float = FRESH) -> bytes:
        """The snapshot as JSON bytes, rebuilt only when something changed and the last
        build is older than `fresh` seconds: however many clients poll, building it costs
        the loop at most a few times a second, and dispatch does not wait behind them."""
        key = (self.model.version, self.cursor())
        now = time.monotonic()
        cached = self._cached
        if cached is None or (cached[0] != key and now - cached[1] >= fresh):
            data = dumps(self.current())
            self._cached = cached = (key, now, data)
        return cached[2]

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
        key = (self.model.version, self.cursor())
        there = self.path.exists()
        if key == self._written and there:
            return
        started = time.monotonic()
        if there and not now and started < self._next:
            return
        if self._under_way is not None:
            if not now:
                return  # it ends within a few turns of the loop
            self._under_way.abort()
            self._under_way = None
        data: Iterator[bytes]
        if self.serving:
            data = iter((self.body(fresh=0.0),))
        else:  # nothing else asks for `body()`: nothing to keep
            data = pieces(self.model.view(), key[1], self.clock())
        try:
            file = self._under_way = AtomicFile(self.path, sync=False)
        except OSError as error:
            self._failed(error)
            return
        self._slice(key, file, data, started, 0.0, now)

    def _slice(
        self,
        key: tuple[int, int | None],
        file: AtomicFile,
        data: Iterator[bytes],
        started: float,
        spent: float,
        now: bool,
    ) -> None:
        if self._under_way is not file:
            return  # given up for a write at once
        began = time.monotonic()
        try:
            loop = None if now else asyncio.get_running_loop()
        except RuntimeError:  # no loop (a command, a test): all at once
            loop = None
        try:
            for piece in data:
                file.write(piece)
                if loop is not None and time.monotonic() - began >= SLICE:
                    spent += time.monotonic() - began
                    loop.call_soon(self._slice, key, file, data, started, spent, now)
                    return
            file.commit()
        except OSError as error:
            self._under_way = None  # the file removed its temp file
            self._failed(error)
            return
        except BaseException:
            self._under_way = None
            file.abort()
            raise
        self._under_way = None
        if self._failing is not None:
            self._failing = None
            if self.report is not None:
                self.report("info", f"state_dir {self.path.parent}: {FILE} written again")
        self._written = key
        self._next = started + (spent + time.monotonic() - began) / SHARE

    def _failed(self, error: OSError) -> None:
        problem = (
            f"state_dir {self.path.parent}: cannot write {FILE}: {error.strerror or error}; "
            "`ghit-work status` shows an older snapshot (or none) until it can"
        )
        if problem != self._failing:
            self._failing = problem
            if self.report is not None:
                self.report("error", problem)


def read(state_dir: Path, report: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The snapshot the running instance wrote, or None. One that cannot be read is moved
    aside (`status.json.bad`, so it is reported once, and the instance writes a new one
    within a second) and told to `report`."""
    path = state_dir / FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as error:
        why = error.strerror or str(error)
    except ValueError as error:
        why = str(error).splitlines()[0][:200] if str(error) else "not JSON"
    else:
        if isinstance(data, dict):
            return data
        why = "not a JSON object"
    where = move_aside(path, "bad")
    if report is not None:
        report(
            f"{path}: unreadable ({why}); {where}; the running ghit-work writes a new one "
            "within a second"
        )
    return None


def render(snapshot: dict[str, Any], out: TextIO) -> None:
    """`ghit-work status`: what the instance is doing, for a person."""
    stream = snapshot["stream"]
    cursor = stream.get("cursor")
    print(
        f"ghit-work {snapshot.get('version', '?')} (pid {snapshot.get('pid')}), "
        f"config {snapshot.get('config')}, as of {snapshot.get('time')}",
        file=out,
    )
    print(
        f"stream: {stream.get('state')}, cursor {cursor if cursor is not None else 'none'}, "
        f"{stream.get('events_seen', 0)} events seen",
        file=out,
    )
    print(f"cost today: ${snapshot.get('cost_today_usd', 0.0):.2f}", file=out)
    agents = snapshot.get("agents", [])
    print(f"agents ({len(agents)}):", file=out)
    width = max((len(agent["name"]) for agent in agents), default=4)
    for agent in agents:
        parts = [f"{agent['state']:<12}", f"queue {agent['queue']}"]
        if agent["batch"]:
            parts.append(f"batch [{id_ranges(agent['batch'])}]")
        if agent.get("attempts"):
            parts.append(f"attempt {agent['attempt']}/{agent['attempts']}")
        if agent.get("retry_at"):
            parts.append(f"next at {agent['retry_at']}")
        parts.append(f"${agent['usage']['cost_today_usd']:.2f} today")
        parts.append(f"dead letters {agent['dead_letters']}")
        if agent.get("session_id"):
            parts.append(f"session {agent['session_id']}")
        if agent.get("problem"):  # what holds it (a pause, a quota), asks, or failed last
            parts.append(f"- {agent['problem']}")
        print(f"  {agent['name']:<{width}}  " + "  ".join(parts), file=out)
        conversations = agent.get("conversations", [])
        if any(c["conversation"] for c in conversations):
            _conversations(conversations, out)
    attention = snapshot.get("attention", [])
    if attention:
        print("attention (latest last):", file=out)
        for line in attention[-10:]:
            print(f"  {line}", file=out)


def _conversations(conversations: list[dict[str, Any]], out: TextIO) -> None:
    """An agent's conversations under it, one line each (SPEC §12)."""
    names = [c["conversation"] or OWN_NAME for c in conversations]
    width = min(max(map(len, names)), 60)
    for name, conversation in zip(names, conversations, strict=True):
        why = conversation.get("question") or conversation.get("problem")
        print(
            f"      {name:<{width}}  {conversation['state']:<12}  "
            f"queue {conversation['queue']}  ${conversation['usage']['cost_usd']:.2f} in all"
            + (f"  - {why}" if why else ""),
            file=out,
        )
