"""One snapshot of what the instance is doing, for everything that is not the TUI's screen.

The TUI draws `DashboardModel.view()`; the status page, `GET /api/v1/state` and
`ghit-work status` read the JSON snapshot made here from the same view, so all three tell the
same story. The running instance writes it to `state_dir/status.json` (temp file and rename,
at most once a second, only when something changed), so `ghit-work status` works without
`http`.

What it carries is public to whoever may read the state dir or reach the port: states,
event ids and titles, counts, costs, status lines (token redacted). Never a prompt, an
environment or a secret.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ghitwork import __version__
from ghitwork.archive import iso
from ghitwork.dashboard import AgentView, DashboardModel, View
from ghitwork.results import RunResult
from ghitwork.saved import dumps
from ghitwork.status import id_ranges

FILE = "status.json"
REFRESH = 1.0  # seconds: the snapshot file is rewritten at most this often
FRESH = 0.25  # seconds: the API serves a snapshot at most this old (a rebuild costs the loop)
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
    }


def _agent(agent: AgentView) -> dict[str, Any]:
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
            "input_tokens": agent.usage_total.input_tokens,
            "output_tokens": agent.usage_total.output_tokens,
            "cached_tokens": agent.usage_total.cached_tokens,
            "cost_usd": round(agent.usage_total.cost_usd, 6),
            "cost_today_usd": round(agent.usage_today.cost_usd, 6),
        },
        "dead_letters": len(agent.dead_letters),
        "runs": [_run(run) for run in agent.runs],
    }


def build(view: View, cursor: int | None, now: float) -> dict[str, Any]:
    """The snapshot of one view (the shape of `status --json` and `/api/v1/state`)."""
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
        "agents": [_agent(agent) for agent in view.agents],
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


class Snapshots:
    """Keeps the snapshot: built when asked (the HTTP API), written to state_dir when it
    changed (at most once per REFRESH)."""

    def __init__(
        self,
        model: DashboardModel,
        cursor: Callable[[], int | None],
        state_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.cursor = cursor
        self.path = state_dir / FILE
        self.clock = clock
        self._written: tuple[int, int | None] | None = None
        self._cached: tuple[tuple[int, int | None], float, bytes] | None = None

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

    def write_if_changed(self) -> None:
        key = (self.model.version, self.cursor())
        if key == self._written:
            return
        data = self.body(fresh=0.0)
        tmp = self.path.with_name(f".{FILE}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError:
            return  # the state dir's problems are reported by the journal
        self._written = key


def read(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
        print(f"  {agent['name']:<{width}}  " + "  ".join(parts), file=out)
    attention = snapshot.get("attention", [])
    if attention:
        print("attention (latest last):", file=out)
        for line in attention[-10:]:
            print(f"  {line}", file=out)
