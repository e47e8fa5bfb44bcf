"""`ghit-work check` and the first minutes of a newcomer (issue 26): every problem named in
one run, the tail command looked for as the daemon does and a missing one said plainly (a
warning: SPEC §1 has init's config pass `check` wherever the agents' CLIs are installed, and
§4 retries a tail-events that cannot start), a closed pipe ending quietly, and messages that
say what is true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from conftest import GHIT_WORK, ROOT, Setup, ghit_work, toml_list, with_commands

from ghitwork.app.checks import tail_cmd_problem
from ghitwork.config import prompt
from ghitwork.config.load import load_config

BARE_PATH = "/usr/bin:/bin"  # no ghit-cli, codex or claude, nor the venv's bin


def bare_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": BARE_PATH, **extra}


def with_tail(setup: Setup, tail_cmd: list[str] | None) -> None:
    """The config's tail_cmd replaced by `tail_cmd` (None: left out, the default ghit-cli)."""
    line = "" if tail_cmd is None else f"tail_cmd = {toml_list(tail_cmd)}\n"
    setup.config.write_text(re.sub(r"(?m)^tail_cmd = .*\n", line, setup.config.read_text()))


def test_check_names_every_problem_in_one_run(setup: Setup) -> None:
    setup.write_config(
        {
            "a": {"cmd": ["no-such-agent-a"]},
            "b": {
                "cmd": ["no-such-agent-b"],
                "resume_cmd": ["./missing-b", "{session_id}"],
                "session_id_pattern": "session (\\S+)",
            },
            "c": {},
        },
    )
    with_tail(setup, ["no-such-tail-events"])
    result = ghit_work("check", cwd=setup.path)
    assert result.returncode == 2
    assert result.stdout == ""
    warning, *lines = result.stderr.splitlines()
    assert warning.startswith("ghit-work: warning: ghit-work.toml: ghit-work.tail_cmd: ")
    assert "'no-such-tail-events' is not on PATH" in warning
    assert [re.sub(r": .*", "", line.split("ghit-work.toml: ")[1]) for line in lines] == [
        "agents.a.cmd",
        "agents.b.cmd",
        "agents.b.resume_cmd",
    ]
    assert all(line.startswith("ghit-work: error: ghit-work.toml: ") for line in lines)
    assert "./missing-b: no such file (relative paths start from workdir" in lines[2]


def test_check_warns_of_a_missing_tail_command_with_the_default_ghit_cli(setup: Setup) -> None:
    setup.write_config({"a": {}}, retry="2m")
    with_tail(setup, None)
    result = ghit_work("check", cwd=setup.path, env=bare_env())
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "ghit-work: warning: ghit-work.toml: ghit-work.tail_cmd: command not found: 'ghit-cli' "
        f"is not on PATH (nor beside ghit-work in {Path(sys.executable).parent}); install it "
        "or give its full path; until it is, tail-events cannot start: a start retries it "
        "for the retry window (2m), then exits 3\n"
    )
    assert "tail-events: ghit-cli tail-events --scope team:ghit" in result.stdout
    found = ghit_work("check", cwd=setup.path, env=with_commands(setup.path, "ghit-cli"))
    assert found.returncode == 0, found.stderr
    assert found.stderr == ""


def test_check_finds_the_tail_command_as_the_daemon_does(setup: Setup) -> None:
    """Beside ghit-work (a virtualenv not activated), and a path from the config's dir."""
    setup.write_config({"a": {}})
    with_tail(setup, ["ghit-work-replay", "events.jsonl"])
    assert ghit_work("check", cwd=setup.path, env=bare_env()).returncode == 0
    tail = setup.path / "bin" / "tail-events"
    tail.parent.mkdir()
    tail.write_text("#!/bin/sh\n")
    with_tail(setup, ["bin/tail-events"])
    result = ghit_work("check", "-c", str(setup.config), cwd=ROOT, env=bare_env())
    assert result.returncode == 0
    assert "ghit-work.tail_cmd: bin/tail-events: not executable (chmod +x it)" in result.stderr
    tail.chmod(0o755)
    fixed = ghit_work("check", "-c", str(setup.config), cwd=ROOT)
    assert fixed.returncode == 0 and fixed.stderr == ""


def test_no_enabled_agent_means_no_tail_command_to_check(setup: Setup) -> None:
    setup.write_config({"a": {"enabled": False}})
    with_tail(setup, ["no-such-tail-events"])
    config = load_config(setup.config)
    assert tail_cmd_problem(config, {"PATH": BARE_PATH}) is None


def test_init_then_check_names_every_missing_command(tmp_path: Path) -> None:
    """The first stumble: without codex, claude and ghit-cli, one run says all of it; with
    the agents' CLIs installed, init's config passes as written (SPEC §1), ghit-cli or not."""
    env = bare_env()
    assert ghit_work("init", cwd=tmp_path, env=env).returncode == 0
    result = ghit_work("check", cwd=tmp_path, env=env)
    assert result.returncode == 2
    keys = re.findall(r"ghit-work\.toml: (\S+):", result.stderr)
    assert keys == [
        "ghit-work.tail_cmd",
        "agents.codex.cmd",
        "agents.codex.resume_cmd",
        "agents.claude.cmd",
        "agents.claude.resume_cmd",
    ]
    agents = ghit_work("check", cwd=tmp_path, env=with_commands(tmp_path, "codex", "claude"))
    assert agents.returncode == 0, agents.stderr
    assert agents.stderr.startswith("ghit-work: warning: ghit-work.toml: ghit-work.tail_cmd: ")
    env = with_commands(tmp_path, "ghit-cli", "codex", "claude")
    every = ghit_work("check", cwd=tmp_path, env=env)
    assert every.returncode == 0 and every.stderr == ""


def test_start_with_a_tail_command_that_does_not_exist_says_so_then_retries(setup: Setup) -> None:
    """Said plainly at once, then retried like any tail-events that cannot start (SPEC §4):
    exit 3 once the retry window is used up."""
    setup.write_config({"a": {}}, retry="1s")
    with_tail(setup, None)
    result = ghit_work(cwd=setup.path, env=bare_env(), timeout=30)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.splitlines()
    assert (
        "WARNING tail-events: ghit-work.toml: ghit-work.tail_cmd: command not found: " in (lines[0])
    )
    assert "a start retries it for the retry window (1s), then exits 3" in lines[0]
    assert any("retry in" in line and "retry window used" in line for line in lines)
    assert "gave up" in lines[-1]


def test_redeliver_without_arguments_says_what_it_needs(setup: Setup) -> None:
    setup.write_config({"a": {}})
    result = ghit_work("redeliver", cwd=setup.path)
    assert result.returncode == 2
    assert result.stderr == "ghit-work: error: redeliver needs dead letter ids, or --all\n"
    both = ghit_work("redeliver", "--all", "3", cwd=setup.path)
    assert both.returncode == 2
    assert both.stderr == ("ghit-work: error: redeliver takes dead letter ids or --all, not both\n")


def closed_pipe_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`ghit-work ARGS` whose stdout is a pipe nobody reads any more (its reader has exited,
    as `head -1` does): every write gets EPIPE, deterministically."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [GHIT_WORK, *args], cwd=cwd, stdout=write, stderr=subprocess.PIPE, text=True,
            timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [("check",), ("dead-letters",), ("init", "-c", "new/x.toml")])
def test_output_to_a_closed_pipe_ends_quietly(setup: Setup, args: tuple[str, ...]) -> None:
    setup.write_config({"a": {}})
    result = closed_pipe_run(*args, cwd=setup.path)
    assert (result.returncode, result.stderr) == (0, "")


def test_check_piped_into_head_exits_0(setup: Setup) -> None:
    """The real pipe of the issue, under pipefail: head takes one line, check ends quietly."""
    setup.write_config({"a": {}})
    for _ in range(3):
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"{GHIT_WORK} check | head -1"],
            cwd=setup.path, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert (result.returncode, result.stdout, result.stderr) == (
            0,
            "config: ghit-work.toml\n",
            "",
        )


def test_a_closed_pipe_keeps_checks_status(setup: Setup) -> None:
    setup.write_config({"a": {"cmd": ["no-such-agent-a"]}})
    result = closed_pipe_run("check", cwd=setup.path)
    assert result.returncode == 2
    assert "agents.a.cmd: command not found" in result.stderr


def test_the_render_error_hint_names_every_variable_of_the_context() -> None:
    """Issue 26 #9: `attempt` was missing; the hint and docs/prompt.md's table agree."""
    with pytest.raises(jinja2.UndefinedError) as raised:
        jinja2.Environment(undefined=jinja2.StrictUndefined).from_string("{{ nope }}").render()
    hint = prompt.describe_error(raised.value)
    assert hint == (
        "'nope' is undefined (the context has: agent, events, session_id, resumed, "
        "attempt, redelivered, conversation)"
    )
    table = (ROOT / "docs" / "prompt.md").read_text().split("## Context")[1].split("\n\n")[1]
    documented = {re.match(r"\| `(\w+)", row)[1] for row in table.splitlines()[2:]}  # type: ignore[index]
    assert documented == set(prompt.CONTEXT)


def test_init_says_agents_need_their_own_ghit_credentials(tmp_path: Path) -> None:
    """Issue 26: agents never get GHIT_API_URL/GHIT_API_TOKEN; the config says it where an
    operator looks (the tail_cmd comment, and the generic agent's env), whatever the presets."""
    for presets in (["--preset", "codex"], []):
        config = tmp_path / "-".join(presets or ["all"]) / "ghit-work.toml"
        assert ghit_work("init", "-c", str(config), *presets, cwd=tmp_path).returncode == 0
        text = config.read_text()
        assert "an agent that replies\n# through ghit-cli needs its own in its `env`" in text
    assert "# GHIT_API_TOKEN = " in text.split("[agents.agent.env]")[1]
    docs = (ROOT / "docs" / "configuration.md").read_text()
    env_row = next(line for line in docs.splitlines() if line.startswith("| `env` |"))
    assert "one that replies through ghit-cli needs its own here" in env_row
