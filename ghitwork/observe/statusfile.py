"""status.json read back and shown to a person: `ghit-work status`.

What the running instance wrote (observe/snapshot.py); one that cannot be read is moved aside
and reported, never trusted half.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ghitwork.model.formatting import id_ranges
from ghitwork.observe.snapshot import FILE
from ghitwork.observe.view import OWN_NAME
from ghitwork.system.files import move_aside


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
