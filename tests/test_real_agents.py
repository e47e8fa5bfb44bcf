"""The init presets with the real Codex and Claude Code CLIs, offline, end to end.

Opt-in: `nox -s real-agents` installs both CLIs from npm into a scratch prefix and runs this
with GHIT_WORK_REAL_AGENTS=PREFIX; elsewhere it is skipped. A stub model server on 127.0.0.1
(tests/stub_model.py) answers them with known usage; no key, no network beyond the registry.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPLAY, Running, ghit_work, write_events

PREFIX = os.environ.get("GHIT_WORK_REAL_AGENTS", "")
pytestmark = pytest.mark.skipif(
    not PREFIX,
    reason="the real agent CLIs run with `nox -s real-agents` (GHIT_WORK_REAL_AGENTS unset)",
)
HERE = Path(__file__).parent


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    log = tmp_path / "requests.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(HERE / "stub_model.py"), "--log", str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().split()[1])
        yield port, log
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def set_mode(port: int, mode: str) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/__mode", data=mode.encode())
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def environment(tmp_path: Path, port: int) -> dict[str, str]:
    """The CLIs pointed at the stub: codex through its config.toml, claude through its env."""
    codex_home = tmp_path / "codex-home"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(
        'model_provider = "stub"\nmodel = "gpt-5.5"\n'
        "[model_providers.stub]\n"
        f'name = "stub"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
        'env_key = "STUB_API_KEY"\nwire_api = "responses"\n'
        "request_max_retries = 0\nstream_max_retries = 0\n"
    )
    bin_dir = Path(PREFIX) / "node_modules" / ".bin"
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CODEX_HOME": str(codex_home),
        "STUB_API_KEY": "sk-test-123",
        "CLAUDE_CONFIG_DIR": str(tmp_path / "claude-home"),
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
        "ANTHROPIC_API_KEY": "sk-test-123",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "GHIT_API_TOKEN": "ghit-secret-token-123",
    }


def configure(tmp_path: Path, env: dict[str, str]) -> Path:
    """`init --preset codex --preset claude` as written, only pointed at recorded events."""
    result = ghit_work("init", "--preset", "codex", "--preset", "claude", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    config = tmp_path / "ghit-work.toml"
    text = config.read_text()
    events = tmp_path / "events.jsonl"
    events.touch()
    text = re.sub(
        r"^tail_cmd = .*$",
        f"tail_cmd = {json.dumps([REPLAY, str(events), '--follow'])}",
        text,
        flags=re.M,
    )
    text = re.sub(r"^run_backoff = .*$", 'run_backoff = "1s"', text, flags=re.M)
    text = re.sub(r"^event_scopes = .*$", 'event_scopes = ["team:ghit"]', text, flags=re.M)
    text = re.sub(r"^event_kinds = .*$", 'event_kinds = ["reply-created"]', text, flags=re.M)
    config.write_text(text)
    checked = ghit_work("check", cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    return events


def event(ident: int) -> dict[str, Any]:
    return {
        "id": ident,
        "kind": "reply-created",
        "actor_user_username": "alice",
        "scopes": ["thread:teams/ghit/ghit/39"],
        "summary": {"thread_title": "Add rate limiting", "web_url": "u", "api_url": "u"},
        "created_at": "2026-11-26T12:00:00Z",
    }


def records(tmp_path: Path, agent: str) -> list[dict[str, Any]]:
    logs = sorted((tmp_path / "logs" / agent).glob("*.json"))
    return [json.loads(path.read_text()) for path in logs]


def test_the_presets_run_resume_and_account_the_real_clis(
    tmp_path: Path, stub: tuple[int, Path]
) -> None:
    port, requests = stub
    env = environment(tmp_path, port)
    events = configure(tmp_path, env)
    with Running(tmp_path, env=env) as daemon:
        write_events(events, [event(1)])
        for agent in ("codex", "claude"):
            daemon.wait_for(f"agent {agent}: working -> idle, exit 0", timeout=120)
        write_events(events, [event(2)])
        for agent in ("codex", "claude"):
            daemon.wait_for(f"agent {agent}: working -> idle, exit 0", count=2, timeout=120)
        text = daemon.text
        for agent in ("codex", "claude"):
            first, second = records(tmp_path, agent)
            assert first["session_id"] and second["session_id"] == first["session_id"]
            assert second["resumed"] and not first["resumed"]
            assert f"resuming session {first['session_id']}" in text
        codex = records(tmp_path, "codex")
        assert [(r["input_tokens"], r["cached_tokens"], r["output_tokens"]) for r in codex] == [
            (1234, 200, 56)
        ] * 2, "per run, not the session's running total"
        claude = records(tmp_path, "claude")
        assert [(r["input_tokens"], r["cached_tokens"], r["output_tokens"]) for r in claude] == [
            (1234 + 300 + 200, 200, 56)
        ] * 2
        assert [round(r["cost_usd"], 6) for r in claude] == [0.009545] * 2
        # The stub saw the resumed session ids: each CLI carried its session on.
        seen = [json.loads(line) for line in requests.read_text().splitlines()]
        codex_ids = {r["headers"].get("session-id") for r in seen if "responses" in r["path"]}
        assert codex_ids == {codex[0]["session_id"]}
        claude_ids = {
            r["headers"].get("x-claude-code-session-id") for r in seen if "messages" in r["path"]
        }
        assert claude_ids == {claude[0]["session_id"]}

        set_mode(port, "429")
        write_events(events, [event(3)])
        for agent in ("codex", "claude"):
            daemon.wait_for(f"agent {agent}: working -> rate-limited", timeout=120)
        set_mode(port, "ok")
        for agent in ("codex", "claude"):
            daemon.wait_for(f"agent {agent}: working -> idle, exit 0", count=3, timeout=120)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    print(f"\n{daemon.text}")
    for agent in ("codex", "claude"):
        rows = records(tmp_path, agent)
        print(
            f"{agent}: "
            + "; ".join(
                f"{r['outcome']} attempt {r['attempt']} {r['input_tokens']} in "
                f"({r['cached_tokens']} cached) {r['output_tokens']} out ${r['cost_usd']}"
                for r in rows
            )
        )
    for path in (tmp_path / "logs").rglob("*"):
        if path.is_file():
            assert "ghit-secret-token-123" not in path.read_text(errors="replace")
