"""The init presets with the real Codex and Claude Code CLIs, offline, end to end.

Opt-in: `nox -s real-agents` installs both CLIs from npm into a scratch prefix and runs this
with GHIT_WORK_REAL_AGENTS=PREFIX; elsewhere it is skipped. A stub model server on 127.0.0.1
(tests/stub_model.py) answers them with known usage, a rate limit, or an account at its usage
limit as each provider answers it; no key, no network beyond the registry.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import REPLAY, Running, ghit_work, poll, write_events

from ghitwork.flow.accounts import JITTER
from ghitwork.model.durations import clock_time

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


# -- conversations = "thread" (SPEC §12): the presets' commented block, uncommented

THREADS = ("thread:teams/example/project/1", "thread:teams/example/project/2")
# A kind each preset subscribes to; its event_scopes (repo:teams/example/project for codex,
# team:example for claude) cover both threads as written.
KINDS = {"codex": "reply-created", "claude": "pull-review-created"}
BLOCK_KEYS = {
    "conversations",
    "concurrency",
    "workdir",
    "workspace_setup",
    "workspace_teardown",
    "workspace_keep",
}
# The session id as each CLI sends it to the model, on every request.
SESSION_HEADER = {"codex": "session-id", "claude": "x-claude-code-session-id"}
MODEL_PATH = {"codex": "/responses", "claude": "/messages"}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


def checkout(tmp_path: Path) -> Path:
    """A small git repo with one commit: what the preset's /srv/checkout stands for."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "README").write_text("a checkout\n")
    git("add", "README", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init", cwd=repo)
    return repo


def configure_threads(tmp_path: Path, env: dict[str, str], agent: str, repo: Path) -> Path:
    """`init --preset AGENT` with its conversations block uncommented as the block says (and
    `workdir = "."` deleted), its worktrees made from `repo`, kept 3 s instead of two days,
    only pointed at recorded events."""
    result = ghit_work("init", "--preset", agent, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    config = tmp_path / "ghit-work.toml"
    lines = config.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "One conversation per thread" in line)
    assert 'delete `workdir = "."` above' in " ".join(lines[start : start + 4])
    uncommented = set()
    for i in range(start, len(lines)):
        found = re.match(r"# (\w+) = ", lines[i])
        if found:
            lines[i] = lines[i].removeprefix("# ")
            uncommented.add(found.group(1))
        elif uncommented:
            break
    assert uncommented == BLOCK_KEYS
    lines.remove('workdir = "."')
    text = "\n".join(lines) + "\n"
    assert re.search(r"^workspace_setup = .*/srv/checkout", text, flags=re.M)
    text = text.replace("/srv/checkout", str(repo))
    text = re.sub(r'^workspace_keep = "2d"$', 'workspace_keep = "3s"', text, flags=re.M)
    events = tmp_path / "events.jsonl"
    events.touch()
    text = re.sub(
        r"^tail_cmd = .*$",
        f"tail_cmd = {json.dumps([REPLAY, str(events), '--follow'])}",
        text,
        flags=re.M,
    )
    config.write_text(text)
    checked = ghit_work("check", cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    return events


def thread_event(ident: int, agent: str, thread: str) -> dict[str, Any]:
    return {
        **event(ident),
        "kind": KINDS[agent],
        "scopes": [thread],
        "summary": {"thread_title": f"Thread {thread[-1]}", "web_url": "u", "api_url": "u"},
    }


# What each run costs against the stub (per run, in the records): (input, cached, output).
RUN_USAGE = {"codex": (1234, 200, 56), "claude": (1234 + 300 + 200, 200, 56)}


@pytest.mark.parametrize("agent", ["codex", "claude"])
def test_the_presets_conversations_block_runs_a_session_and_worktree_per_thread(
    tmp_path: Path, stub: tuple[int, Path], agent: str
) -> None:
    port, requests = stub
    env = environment(tmp_path, port)
    repo = checkout(tmp_path)
    events = configure_threads(tmp_path, env, agent, repo)
    worktrees = [tmp_path / "work" / f"teams-example-project-{n}" for n in (1, 2)]
    shown = [f"agent {agent} [{thread}]" for thread in THREADS]
    sent: list[int] = []  # the thread (0 or 1) of each event, by id - 1: ids only grow

    def send(n: int) -> None:
        sent.append(n)
        write_events(events, [thread_event(len(sent), agent, THREADS[n])])

    with Running(tmp_path, env=env) as daemon:
        # Both threads at once (concurrency = 2): each its own run, workspace and session.
        send(0)
        send(1)
        waiting = [0, 1]
        while waiting:  # as each thread's first run ends, whichever ends first
            for n in poll(lambda: [i for i in waiting if ended(daemon, shown[i])], 60):
                waiting.remove(n)
                # A git worktree of the checkout, made by workspace_setup before the run.
                assert (worktrees[n] / ".git").is_file() and (worktrees[n] / "README").is_file()
                send(n)  # its next batch, at once (long before workspace_keep)
        listed = git("worktree", "list", "--porcelain", cwd=repo)
        assert all(f"worktree {w}\n" in listed for w in worktrees), listed
        for who in shown:
            daemon.wait_for(f"{who}: working -> idle, exit 0", count=2, timeout=60)
        second_ids = ([sent.index(0, 2) + 1], [sent.index(1, 2) + 1])
        conversations = poll(
            lambda: threads_in_status(tmp_path, env, agent, last=second_ids),
            what="status.json (rewritten at most once a second) to show both second runs",
        )
        # workspace_keep: each worktree removed (workspace_teardown, then the directory) once
        # its thread has been idle 3 s.
        for who in shown:
            daemon.wait_for(f"{who}: workspace removed", timeout=30)
        assert not any(worktree.exists() for worktree in worktrees)
        assert git("worktree", "list", "--porcelain", cwd=repo).count("worktree ") == 1
        # Thread 1 again, after its worktree was removed: made again, its session resumed.
        send(0)
        daemon.wait_for(f"{shown[0]}: working -> idle, exit 0", count=3, timeout=60)
        assert (worktrees[0] / ".git").is_file()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    text = daemon.text
    print(f"\n{text}")
    for who, worktree, made in zip(shown, worktrees, (2, 1), strict=True):
        assert text.count(f"{who}: workspace ready: {worktree}") == made
        assert text.count(f"{who}: workspace removed") == 1

    # The logdir records: two sessions, from the CLI's own output; each thread's next batches
    # ran resume_cmd with its own thread's session.
    runs: dict[int, dict[str, Any]] = {}
    prompts: dict[int, str] = {}
    for path in (tmp_path / "logs" / agent).glob("*.json"):
        record = json.loads(path.read_text())
        (ident,) = record["event_ids"]  # one event per batch
        runs[ident], prompts[ident] = record, path.with_suffix(".prompt").read_text()
    assert sorted(runs) == [1, 2, 3, 4, 5]
    first, second = runs[1], runs[2]
    assert first["session_id"] and second["session_id"]
    assert first["session_id"] != second["session_id"]
    assert first["start"] < second["end"] and second["start"] < first["end"], "side by side"
    for ident, run in runs.items():
        n = sent[ident - 1]
        opened = runs[n + 1]  # the thread's first run
        assert run["outcome"] == "ok" and run["conversation"] == THREADS[n]
        assert f" in {worktrees[n]}.\n" in prompts[ident]  # the preset's prompt: agent.workdir
        assert (run["input_tokens"], run["cached_tokens"], run["output_tokens"]) == RUN_USAGE[
            agent
        ], "per run: codex's session totals are told apart per thread"
        if run is opened:
            assert not run["resumed"] and session_of(run["command"]) is None
        else:
            assert run["resumed"] and session_of(run["command"]) == opened["session_id"]
            assert run["session_id"] == opened["session_id"]
    # status --json lists each thread with its session and what it has cost (two runs each).
    assert {k: c["session_id"] for k, c in conversations.items()} == {
        THREADS[0]: first["session_id"],
        THREADS[1]: second["session_id"],
    }
    for conversation in conversations.values():
        assert conversation["usage"]["input_tokens"] == 2 * RUN_USAGE[agent][0]

    # What the model was sent: each worktree's calls carry that thread's session, and the CLI
    # said it was working in that worktree.
    seen = [json.loads(line) for line in requests.read_text().splitlines()]
    calls: dict[str, list[str]] = {}
    for request in seen:
        if MODEL_PATH[agent] in request["path"]:
            calls.setdefault(request["cwd"], []).append(request["headers"][SESSION_HEADER[agent]])
    assert calls == {
        os.path.realpath(worktrees[0]): [first["session_id"]] * 3,
        os.path.realpath(worktrees[1]): [second["session_id"]] * 2,
    }


def ended(daemon: Running, who: str) -> bool:
    """Whether a run of `who` has ended well (ghit-work still running)."""
    assert daemon.process.poll() is None, daemon.text
    return f"{who}: working -> idle, exit 0" in daemon.text


def threads_in_status(
    tmp_path: Path, env: dict[str, str], agent: str, last: tuple[list[int], ...]
) -> dict[str, dict[str, Any]]:
    """The agent's conversations in `status --json` once the threads' last runs are `last`
    (else none)."""
    status = json.loads(ghit_work("status", "--json", cwd=tmp_path, env=env).stdout)
    (state,) = [a for a in status["agents"] if a["name"] == agent]
    found = {c["conversation"]: c for c in state["conversations"]}
    runs = tuple((found.get(t, {}).get("last_run") or {}).get("event_ids") for t in THREADS)
    return found if runs == last else {}


def session_of(command: list[str]) -> str | None:
    """The session id a run's command resumes (the preset's resume_cmd), or None."""
    if "resume" in command:  # codex exec resume --json --skip-git-repo-check ID -
        return command[-2]
    if "--resume" in command:  # claude -p ... --resume ID
        return command[command.index("--resume") + 1]
    return None


# -- quota windows (SPEC §14): each CLI's own usage-limit message closes its account

# The windows the stub announces: (seconds from now to the reset, Anthropic's claim, OpenAI's
# plan). Within a day both CLIs print a time of day; further ahead, a date. The extra 17 s
# make the reset fall inside a minute: both CLIs print it truncated to the minute.
WINDOWS = {
    "session": (2 * 3600 + 17, "five_hour", ""),
    "weekly": (50 * 3600 + 17, "seven_day", "plus"),
}
# The preset's commented `# account = ...` line, uncommented.
ACCOUNT = {"codex": "chatgpt-plus", "claude": "claude-max"}
# Where each CLI's JSON output carries its message: codex's `error` line, Claude Code's
# `result` line.
MESSAGE = {
    "codex": re.compile(r'^\{"type":"error","message":"([^"]*)"\}$', re.M),
    "claude": re.compile(r'^\{"type":"result",.*?"result":"([^"]*)"', re.M),
}
DAEMON_TZ = "Europe/Berlin"  # ghit-work's zone, and codex's (it prints no zone)
CLAUDE_TZ = "America/New_York"  # claude's own: it prints its zone, so it may differ
QUOTA_LINE = re.compile(
    r"account (?P<account>\S+): usage limit reached \((?P<agent>\w+): (?P<reason>.*)\); "
    r"no run of (?P<agents>.*) until (?P<until>(?:\d{4}-\d\d-\d\dT)?\d\d:\d\d:\d\dZ) "
    r"\(in (?P<left>\S+)\)$",
    re.M,
)


def configure_quota(tmp_path: Path, env: dict[str, str], agent: str) -> Path:
    """`init --preset AGENT` with its `# account = ...` line uncommented, only pointed at
    recorded events (claude in its own zone)."""
    result = ghit_work("init", "--preset", agent, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    config = tmp_path / "ghit-work.toml"
    text = config.read_text()
    commented = f'# account = "{ACCOUNT[agent]}"\n'
    assert text.count(commented) == 1
    text = text.replace(commented, commented.removeprefix("# "))
    if agent == "claude":
        text = text.replace(
            "[agents.claude]\n", f'[agents.claude]\nenv = {{ TZ = "{CLAUDE_TZ}" }}\n'
        )
    events = tmp_path / "events.jsonl"
    events.touch()
    text = re.sub(
        r"^tail_cmd = .*$",
        f"tail_cmd = {json.dumps([REPLAY, str(events), '--follow'])}",
        text,
        flags=re.M,
    )
    text = re.sub(r"^event_scopes = .*$", 'event_scopes = ["team:ghit"]', text, flags=re.M)
    text = re.sub(r"^event_kinds = .*$", 'event_kinds = ["reply-created"]', text, flags=re.M)
    config.write_text(text)
    checked = ghit_work("check", cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    return events


def agent_status(tmp_path: Path, env: dict[str, str], agent: str) -> dict[str, Any]:
    status = json.loads(ghit_work("status", "--json", cwd=tmp_path, env=env).stdout or "{}")
    return next((a for a in status.get("agents", []) if a["name"] == agent), {})


def in_quota(status: dict[str, Any]) -> dict[str, Any]:
    """The agent's status once it is in quota, else {}."""
    return status if status.get("state") == "quota" else {}


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize("agent", ["codex", "claude"])
def test_each_preset_reads_its_clis_usage_limit_and_waits_for_the_reset(
    tmp_path: Path, stub: tuple[int, Path], agent: str, window: str
) -> None:
    port, requests = stub
    ahead, claim, plan = WINDOWS[window]
    reset = int(time.time()) + ahead
    # what the CLI prints is the minute, truncated; ghit-work reads it as that minute's end
    printed = reset - reset % 60 + 59
    set_mode(port, f"usage_limit&reset={reset}&claim={claim}" + (f"&plan={plan}" if plan else ""))
    env = {**environment(tmp_path, port), "TZ": DAEMON_TZ}
    if agent == "claude":
        # Claude Code prints its usage-limit message only for a subscription (OAuth) login; with
        # an API key every 429 is retried and ends as "Request rejected (429)", no reset.
        del env["ANTHROPIC_API_KEY"]
        env["CLAUDE_CODE_OAUTH_TOKEN"] = "sk-ant-oat01-fake-token-for-the-stub"
    events = configure_quota(tmp_path, env, agent)
    account = ACCOUNT[agent]
    with Running(tmp_path, env=env) as daemon:
        write_events(events, [event(1)])
        daemon.wait_for(f"agent {agent}: working -> quota", timeout=60)
        found = QUOTA_LINE.search(daemon.wait_for(f"account {account}: usage limit reached"))
        assert found is not None, daemon.text
        assert (found["account"], found["agent"], found["agents"]) == (account, agent, agent)
        # status --json: quota, until the reset the stub announced (as printed) plus the jitter
        shown = poll(
            lambda: in_quota(agent_status(tmp_path, env, agent)),
            what="status --json to show the agent in quota",
        )
        until = datetime.fromisoformat(shown["retry_at"]).timestamp()
        assert printed + JITTER[0] <= until <= printed + JITTER[1], (reset, shown["retry_at"])
        assert until > reset, "never woken before the window really opens"
        assert found["until"] == clock_time(until)
        assert shown["problem"] == f"quota until {found['until']} (account {account})"
        assert shown["attempt"] == 1 and shown["dead_letters"] == 0
        # While the account is closed, events keep batching and nothing runs.
        write_events(events, [event(2)])
        poll(
            lambda: agent_status(tmp_path, env, agent).get("queue") == 2,
            what="both events waiting in quota",
        )
        assert agent_status(tmp_path, env, agent)["state"] == "quota"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    text = daemon.text
    print(f"\n{text}")
    # One model call, one run: the CLI did not retry, ghit-work did not either.
    seen = [json.loads(line) for line in requests.read_text().splitlines()]
    assert sum(MODEL_PATH[agent] in r["path"] for r in seen) == 1, seen
    (run,) = records(tmp_path, agent)
    assert run["outcome"] == "rate_limited" and run["attempt"] == 1 and run["event_ids"] == [1]
    assert "dead letter" not in text and "-> retrying" not in text
    dead = ghit_work("dead-letters", "--json", cwd=tmp_path, env=env)
    assert dead.returncode == 0 and dead.stdout.strip() == "", dead.stdout
    # The message, as the CLI printed it (its archived stdout): the stub's reset, in its zone.
    output = next((tmp_path / "logs" / agent).glob("*.stdout")).read_text()
    (message, *_) = MESSAGE[agent].findall(output)
    zone = CLAUDE_TZ if agent == "claude" else DAEMON_TZ
    assert printed_as(agent, reset, run_at=run["start"], zone=zone) in message, message
    print(
        f"{agent} ({window}): stub reset {datetime.fromtimestamp(reset, UTC):%b %-d %H:%M:%SZ}"
        f" ({reset}); printed {message!r}; quota until {shown['retry_at']}"
    )


def printed_as(agent: str, reset: int, run_at: str, zone: str) -> str:
    """How the CLI words `reset` (its message's end), run at `run_at` (ISO) in `zone`: codex
    `at 5:41 PM.` the same day, else `at Dec 5th, 2026 5:41 PM.`; Claude Code `resets 5:41pm
    (ZONE)` (`5pm` on the hour) within 24 h, else `resets Dec 5, 5:41pm (ZONE)` (the year
    after the day when it is another year's)."""
    moment = datetime.fromtimestamp(reset, ZoneInfo(zone))
    now = datetime.fromisoformat(run_at).astimezone(ZoneInfo(zone))
    hour, minute, half = moment.strftime("%-I"), moment.strftime("%M"), moment.strftime("%p")
    if agent == "codex":
        clock = f"{hour}:{minute} {half}"
        if moment.date() == now.date():
            return f"at {clock}."
        day = moment.day
        th = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
        return f"at {moment:%b} {day}{th}, {moment.year} {clock}."
    clock = hour + (f":{minute}" if minute != "00" else "") + half.lower()
    if moment - now <= timedelta(hours=24):
        return f"resets {clock} ({zone})"
    year = f"{moment.year}, " if moment.year != now.year else ""
    return f"resets {moment:%b} {moment.day}, {year}{clock} ({zone})"
