"""Deterministic benchmark data: realistic ghit events and agents that match ~5% each."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

KINDS = [
    "reply-created",
    "thread-created",
    "user-mention",
    "pull-created",
    "pull-review-created",
    "pull-review-updated",
    "pull-review-deleted",
]
ACTORS = ["alice", "bob", "carol", "dave", "erin", "codex", "claude", None]
TEAMS = [f"team{t}" for t in range(10)]
WORDS = [
    "rate",
    "limiting",
    "events",
    "endpoint",
    "retry",
    "window",
    "flaky",
    "reconnect",
    "docs",
    "typo",
    "install",
    "page",
    "dependency",
    "report",
    "review",
    "cache",
    "config",
    "reload",
    "signal",
    "budget",
    "agent",
    "loop",
]


def make_events(count: int, seed: int = 42) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for ident in range(1, count + 1):
        team = rng.choice(TEAMS)
        repo = f"teams/{team}/repo{rng.randrange(5)}"
        kind = rng.choice(KINDS)
        thread = rng.randrange(1, 400)
        actor = rng.choice(ACTORS)
        title = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 8))).capitalize()
        if kind.startswith("pull"):
            scopes = [f"repo:{repo}"]
            path = f"{repo}/pulls/{thread}"
        elif kind == "user-mention":
            scopes = [f"user:{rng.choice(ACTORS[:5])}", f"thread:{repo}/{thread}"]
            path = f"{repo}/threads/{thread}?reply_root={rng.randrange(1, 50)}"
        else:
            scopes = [f"thread:{repo}/{thread}"]
            path = f"{repo}/threads/{thread}"
        events.append(
            {
                "id": ident,
                "kind": kind,
                "actor_user_uuid": None if actor is None else f"{rng.getrandbits(128):032x}",
                "actor_user_username": actor,
                "scopes": scopes,
                "summary": {
                    "thread_title": title,
                    "web_url": f"https://ghit.example/{path}",
                    "api_url": f"https://ghit.example/api/v1/{path}",
                },
                "created_at": f"2026-03-19T12:{ident // 60 % 60:02d}:{ident % 60:02d}Z",
            }
        )
    return events


def make_agents(count: int) -> list[dict[str, Any]]:
    """The first 20 match ~5% of events each (one team of ten, three kinds of seven); the
    rest subscribe to scopes no event has, so they never match."""
    agents = []
    for index in range(count):
        name = f"agent{index:03d}"
        if index < 20:
            kinds = [KINDS[(index + k) % 7] for k in range(3)]
            scopes = [f"team:{TEAMS[index % 10]}"]
        else:
            kinds = KINDS[:3]
            scopes = [f"repo:teams/nobody/repo{index}"]
        agents.append({"name": name, "username": name, "scopes": scopes, "kinds": kinds})
    return agents


def covering(scope: str) -> list[str]:
    form, _, rest = scope.partition(":")
    out = [scope]
    locator = rest.rpartition("/")[0] if form == "thread" else rest if form == "repo" else ""
    if form == "thread":
        out.append(f"repo:{locator}")
    parts = locator.split("/")
    if len(parts) >= 3 and parts[0] == "teams":
        out.append(f"team:{parts[1]}")
    return out


def expected(events: list[dict[str, Any]], agents: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {a["name"]: [] for a in agents}
    for event in events:
        covers = {c for s in event["scopes"] for c in covering(s)}
        for agent in agents:
            if (
                event["kind"] in agent["kinds"]
                and event["actor_user_username"] != agent["username"]
                and covers & set(agent["scopes"])
            ):
                out[agent["name"]].append(event["id"])
    return out


def write_events(path: Path, events: list[dict[str, Any]]) -> None:
    with path.open("w") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")


def write_config(
    path: Path,
    agents: list[dict[str, Any]],
    tail_cmd: list[str],
    cmd: list[str],
    record_dir: Path,
    limit: int = 0,
    prompt: str = "{% for e in events %}{{ e.id }}\n{% endfor %}",
) -> None:
    lines = [
        "[ghit-work]",
        f"tail_cmd = {json.dumps(tail_cmd)}",
        f"limit = {limit}",
        f"agent_prompt = {json.dumps(prompt)}",
    ]
    for agent in agents:
        lines += [
            f"[agents.{agent['name']}]",
            f"cmd = {json.dumps(cmd)}",
            f"username = {json.dumps(agent['username'])}",
            f"event_scopes = {json.dumps(agent['scopes'])}",
            f"event_kinds = {json.dumps(agent['kinds'])}",
            f"env = {{ RECORD = {json.dumps(str(record_dir / agent['name']))} }}",
        ]
        # Other agent keys as written (`conversations`, `concurrency`: SPEC section 12)
        lines += [f"{key} = {json.dumps(value)}" for key, value in agent.get("options", {}).items()]
    path.write_text("\n".join(lines) + "\n")
