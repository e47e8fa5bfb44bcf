"""The command line through the real `ghit-work` command: init, check, flags, exit statuses."""

from __future__ import annotations

import shlex
from pathlib import Path

from conftest import ROOT, ghit_work, with_commands

from ghitwork import __version__


def test_version_prints_the_version() -> None:
    result = ghit_work("--version", cwd=ROOT)
    assert (result.returncode, result.stdout.strip()) == (0, f"ghit-work {__version__}")


def test_init_writes_a_config_that_passes_check(tmp_path: Path) -> None:
    result = ghit_work("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = (tmp_path / "ghit-work.toml").read_text()
    assert (tmp_path / "prompt.md.j2").exists()
    for key in (
        "agent_prompt_file",
        "retry",
        "limit",
        "tail_cmd",
        "state_dir",
        "budget",
        "run_attempts",
        "run_backoff",
        "cost_budget",
        "token_budget",
        "cmd",
        "username",
        "workdir",
        "logdir",
        "event_scopes",
        "event_kinds",
        "enabled",
        "resume_cmd",
        "session_id_pattern",
        "env",
        "timeout",
        "stall_timeout",
        "rate_limit_pattern",
        "usage_patterns",
        "usage_totals",
        "price",
        "agent_prompt",
    ):
        assert f"{key} =" in config or f"# {key} =" in config or f".{key}]" in config, key
    env = with_commands(tmp_path, "codex", "claude", "ghit-cli")
    checked = ghit_work("check", cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    out = checked.stdout
    assert "codex (enabled" in out and "claude (enabled" in out and "agent (enabled" in out
    assert "    budget:   30/1h\n" in out, "check shows each agent's budget"
    assert "usage:    1 pattern(s), session totals, price none" in out
    assert "usage:    4 pattern(s), run totals, price none" in out


def test_init_without_the_clis_installed_fails_check_naming_the_command(tmp_path: Path) -> None:
    assert ghit_work("init", cwd=tmp_path).returncode == 0
    env = with_commands(tmp_path, "claude")  # codex is not installed
    env["PATH"] = str(tmp_path / "bin") + ":/usr/bin:/bin"
    checked = ghit_work("check", cwd=tmp_path, env=env)
    assert checked.returncode == 2
    assert "ghit-work.toml: agents.codex.cmd: command not found: 'codex'" in checked.stderr


def test_init_presets_choose_the_agents(tmp_path: Path) -> None:
    result = ghit_work("init", "--preset", "generic", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    checked = ghit_work("check", cwd=tmp_path, env=with_commands(tmp_path, "ghit-cli"))
    assert checked.returncode == 0, "the generic preset runs wherever ghit-cli is installed"
    assert "agents: 1 (1 enabled)" in checked.stdout and "cmd:      cat" in checked.stdout
    both = tmp_path / "both"
    result = ghit_work(
        "init",
        "-c",
        "both/ghit-work.toml",
        "--preset",
        "claude",
        "--preset",
        "codex",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    text = (both / "ghit-work.toml").read_text()
    assert text.index("[agents.claude]") < text.index("[agents.codex]")
    assert "[agents.agent]" not in text
    bad = ghit_work("init", "-c", "x/g.toml", "--preset", "gemini", cwd=tmp_path)
    assert bad.returncode == 2 and "invalid choice: 'gemini'" in bad.stderr


def test_init_honours_the_config_path_and_creates_its_directory(tmp_path: Path) -> None:
    result = ghit_work("init", "-c", "etc/work.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc" / "work.toml").exists()
    assert (tmp_path / "etc" / "prompt.md.j2").exists()
    env = with_commands(tmp_path, "codex", "claude", "ghit-cli")
    assert ghit_work("-c", "etc/work.toml", "check", cwd=tmp_path, env=env).returncode == 0


def test_init_refuses_to_overwrite_anything_and_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / "prompt.md.j2").write_text("mine")
    result = ghit_work("init", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith("ghit-work: error: prompt.md.j2: already exists")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "ghit-work.toml").exists()
    assert (tmp_path / "prompt.md.j2").read_text() == "mine"
    (tmp_path / "prompt.md.j2").unlink()
    (tmp_path / "ghit-work.toml").write_text("mine")
    again = ghit_work("init", cwd=tmp_path)
    assert again.returncode != 0 and "ghit-work.toml: already exists" in again.stderr
    assert (tmp_path / "ghit-work.toml").read_text() == "mine"


def test_check_shows_agents_and_the_exact_tail_command() -> None:
    result = ghit_work("check", "-c", "examples/quickstart/ghit-work.toml", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "codex (enabled, user codex)" in out and "claude (enabled, user claude)" in out
    assert "cmd:      sh agents/echo-agent.sh" in out
    assert "scopes:   repo:teams/ghit/ghit" in out
    assert "kinds:    pull-created, pull-review-created, pull-review-updated, user-mention" in out
    tail = next(line for line in out.splitlines() if line.startswith("tail-events: "))
    argv = shlex.split(tail.removeprefix("tail-events: "))
    assert argv == [
        "ghit-work-replay",
        "events.jsonl",
        "--delay",
        "0.1",
        "--scope",
        "repo:teams/ghit/ghit",
        "--scope",
        "team:ghit",
        "--kind",
        "thread-created",
        "--kind",
        "reply-created",
        "--kind",
        "user-mention",
        "--kind",
        "pull-created",
        "--kind",
        "pull-review-created",
        "--kind",
        "pull-review-updated",
    ]


def test_check_leaves_disabled_agents_out_of_the_tail_command(tmp_path: Path) -> None:
    (tmp_path / "ghit-work.toml").write_text(
        """
[ghit-work]
limit = 2
[agents.a]
cmd = ["a"]
username = "a"
event_scopes = ["team:x"]
event_kinds = ["k1"]
[agents.b]
cmd = ["b"]
username = "b"
event_scopes = ["team:y"]
event_kinds = ["k2"]
enabled = false
"""
    )
    env = with_commands(tmp_path, "a", "ghit-cli")
    result = ghit_work("check", "--limit", "7", "--retry", "90s", cwd=tmp_path, env=env)
    assert result.returncode == 0
    assert "b (disabled, user b)" in result.stdout
    assert "tail-events: ghit-cli tail-events --scope team:x --kind k1\n" in result.stdout
    assert "limit: 7   retry: 1m30s" in result.stdout, "CLI values override the file"


def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    for args in (
        ["--limit", "-1", "check"],
        ["--retry", "soon", "check"],
        ["--bogus"],
        ["--log-format", "xml"],
        ["frobnicate"],
    ):
        result = ghit_work(*args, cwd=tmp_path)
        assert result.returncode == 2, args
        assert result.stderr.startswith("ghit-work: error: "), result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
