"""The tail-events stand-in filters like the server and can follow a growing file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import REPLAY, event, poll, write_events


def replay(path: Path, *args: str) -> tuple[list[object], subprocess.CompletedProcess[str]]:
    result = subprocess.run([REPLAY, str(path), *args], capture_output=True, text=True, timeout=30)
    out: list[object] = []
    for line in result.stdout.splitlines():
        try:
            out.append(json.loads(line)["id"])
        except ValueError:
            out.append(line)
    return out, result


def fixture(tmp_path: Path) -> Path:
    return write_events(
        tmp_path / "e.jsonl",
        [
            event(1, scopes=["thread:teams/ghit/ghit/39"]),
            event(2, kind="pull-created", scopes=["repo:teams/ghit/ghit"]),
            event(3, scopes=["thread:teams/docs/site/1"]),
            event(4, scopes=["thread:bob/dotfiles/1"]),
            "not json at all",
            event(5, kind="user-mention", scopes=["user:codex", "thread:teams/ghit/ghit/40"]),
        ],
    )


def test_scopes_are_ored_with_hierarchy_and_kinds_anded(tmp_path: Path) -> None:
    path = fixture(tmp_path)
    assert replay(path, "--team", "ghit")[0] == [1, 2, "not json at all", 5]
    assert replay(path, "--repo", "teams/ghit/ghit", "--kind", "reply-created")[0] == [
        1,
        "not json at all",
    ]
    assert replay(path, "--scope", "repo:bob/dotfiles", "--user", "codex")[0] == [
        4,
        "not json at all",
        5,
    ]
    assert replay(path, "--thread", "teams/ghit/ghit/39", "--last-event-id", "1")[0] == [
        "not json at all"
    ]
    assert replay(path, "--team", "ghit", "--last-event-id", "2")[0] == ["not json at all", 5]


def test_at_least_one_scope_is_required(tmp_path: Path) -> None:
    _, result = replay(fixture(tmp_path), "--kind", "x")
    assert result.returncode == 2 and "at least one scope" in result.stderr


def test_fault_injection_exits_after_n_events_with_a_status(tmp_path: Path) -> None:
    out, result = replay(
        fixture(tmp_path), "--team", "ghit", "--exit-after", "2", "--exit-status", "7"
    )
    assert out == [1, 2] and result.returncode == 7
    _, failed = replay(fixture(tmp_path), "--team", "ghit", "--fail-at-start")
    assert failed.returncode == 1 and "cannot connect" in failed.stderr


def test_follow_prints_lines_appended_later(tmp_path: Path) -> None:
    path = write_events(tmp_path / "e.jsonl", [event(1)])
    process = subprocess.Popen(
        [REPLAY, str(path), "--follow", "--team", "ghit"], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["id"] == 1
        write_events(path, [event(2)])
        assert json.loads(process.stdout.readline())["id"] == 2
        assert process.poll() is None
    finally:
        process.terminate()
        poll(lambda: process.poll() is not None, what="replay to exit")
        assert process.stdout is not None
        process.stdout.close()
