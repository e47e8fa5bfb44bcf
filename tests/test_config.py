"""The config loader: defaults, paths, and one clear line for every mistake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ghit_work

from ghitwork.config.load import load_config
from ghitwork.config.model import ConfigError
from ghitwork.model.durations import Budget

MINIMAL = """
[agents.codex]
cmd = ["codex", "exec"]
username = "codex"
event_scopes = ["repo:teams/ghit/ghit"]
event_kinds = ["reply-created"]
"""


def write(tmp_path: Path, text: str, name: str = "ghit-work.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_key_has_its_documented_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.retry == 300
    assert config.limit == 0
    assert config.tail_cmd == ("ghit-cli", "tail-events")
    assert config.state_dir == (tmp_path / ".ghit-work").resolve()
    assert config.budget is None
    assert config.prompt.origin == "built-in template"
    (agent,) = config.agents
    assert agent.workdir == tmp_path.resolve()
    assert agent.logdir is None
    assert agent.enabled is True
    assert agent.resume_cmd is None and agent.session_id_pattern is None
    assert dict(agent.env) == {}
    assert agent.timeout is None and agent.budget is None


def test_relative_paths_resolve_from_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "p.j2").write_text("{{ agent.name }}")
    text = MINIMAL.replace(
        'username = "codex"', 'username = "codex"\nworkdir = "work"\nlogdir = "../logs"'
    )
    text = '[ghit-work]\nstate_dir = "state"\nagent_prompt_file = "p.j2"\n' + text
    cwd = os.getcwd()
    try:
        os.chdir("/")
        config = load_config(write(tmp_path / "conf", text))
    finally:
        os.chdir(cwd)
    (agent,) = config.agents
    assert config.state_dir == (tmp_path / "conf" / "state").resolve()
    assert agent.workdir == (tmp_path / "conf" / "work").resolve()
    assert agent.logdir == (tmp_path / "logs").resolve()
    assert agent.prompt.render({"agent": {"name": "codex"}}) == "codex"


def test_all_keys_are_read(tmp_path: Path) -> None:
    text = """
[ghit-work]
agent_prompt = "{{ events | length }}"
retry = "1h30m"
limit = 3
tail_cmd = ["ghit-cli", "-E", "env", "tail-events"]
budget = "20/1h"

[agents.codex]
cmd = ["codex", "exec"]
username = "codex-bot"
workdir = "/tmp"
logdir = "/tmp/logs"
event_scopes = ["team:ghit", "thread:teams/ghit/ghit/39"]
event_kinds = ["reply-created", "user-mention"]
enabled = false
resume_cmd = ["codex", "resume", "{session_id}"]
session_id_pattern = 'session: (\\S+)'
env = { FOO = "bar" }
timeout = 90
budget = "5/10m"
agent_prompt_file = "p.j2"

[agents.claude]
cmd = ["claude"]
username = "claude"
event_scopes = ["user:claude"]
event_kinds = ["user-mention"]
"""
    (tmp_path / "p.j2").write_text("custom")
    config = load_config(write(tmp_path, text))
    codex, claude = config.agents
    assert config.retry == 5400 and config.limit == 3
    assert config.tail_cmd == ("ghit-cli", "-E", "env", "tail-events")
    assert codex.username == "codex-bot" and codex.enabled is False
    assert codex.event_scopes == ("team:ghit", "thread:teams/ghit/ghit/39")
    assert codex.resume_cmd == ("codex", "resume", "{session_id}")
    assert codex.session_id_pattern is not None
    assert codex.session_id_pattern.search("session: abc")
    assert dict(codex.env) == {"FOO": "bar"}
    assert codex.timeout == 90 and codex.budget == Budget(5, 600)
    assert codex.prompt.render({}) == "custom"
    assert claude.budget == Budget(20, 3600), "the global budget is every agent's default"
    assert claude.prompt.render({"events": [1, 2]}) == "2"
    assert config.enabled_agents == (claude,)


def test_cli_overrides_win_over_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[ghit-work]\nlimit = 4\nretry = "1m"\n' + MINIMAL))
    assert config.with_overrides(None, None).limit == 4
    overridden = config.with_overrides(5.0, 0)
    assert (overridden.limit, overridden.retry) == (0, 5.0)


AGENT = MINIMAL.strip()


def agent_with(line: str) -> str:
    return AGENT + "\n" + line + "\n"


BAD_INPUTS = [
    # (file text, the exact `key: message` part after the file name)
    ("[ghit-work]\nlimit = = 3\n" + AGENT, "invalid TOML: "),
    (
        '[ghit-work]\nlimit = "3"\n' + AGENT,
        'ghit-work.limit: expected an integer 0 or more, got "3"',
    ),
    ("[ghit-work]\nlimit = -1\n" + AGENT, "ghit-work.limit: expected an integer 0 or more, got -1"),
    (
        '[ghit-work]\nretry = "5 minutes"\n' + AGENT,
        'ghit-work.retry: "5 minutes" is not a duration (try "5m")',
    ),
    (
        "[ghit-work]\ntail_cmd = []\n" + AGENT,
        "ghit-work.tail_cmd: expected a non-empty list of strings",
    ),
    ("[ghit-work]\nretyr = 5\n" + AGENT, "ghit-work.retyr: unknown key (did you mean 'retry'?)"),
    ("[ghitwork]\n" + AGENT, "ghitwork: unknown key"),
    ("[ghit-work]\nlimit = 1\n", "agents: no agent defined; add an [agents.NAME] table"),
    (
        AGENT.replace('cmd = ["codex", "exec"]', "cmd = []"),
        "agents.codex.cmd: expected a non-empty list of strings",
    ),
    (
        AGENT.replace('cmd = ["codex", "exec"]', 'cmd = "codex"'),
        "agents.codex.cmd: expected a non-empty list of strings",
    ),
    (
        AGENT.replace('cmd = ["codex", "exec"]', 'cmd = ["codex", 3]'),
        "agents.codex.cmd: expected a non-empty list of strings",
    ),
    (
        AGENT.replace('cmd = ["codex", "exec"]\n', ""),
        "agents.codex.cmd: missing (required for every agent)",
    ),
    (
        AGENT.replace('username = "codex"', "username = 7"),
        "agents.codex.username: expected a non-empty string, got 7",
    ),
    (
        AGENT.replace('["repo:teams/ghit/ghit"]', "[]"),
        "agents.codex.event_scopes: expected a non-empty list of strings",
    ),
    (
        AGENT.replace('["reply-created"]', "[]"),
        "agents.codex.event_kinds: expected a non-empty list of strings",
    ),
    (
        AGENT.replace('"repo:teams/ghit/ghit"', '"org:ghit"'),
        'agents.codex.event_scopes[0]: "org:ghit" is not a scope',
    ),
    (
        AGENT.replace('"repo:teams/ghit/ghit"', '"self"'),
        'agents.codex.event_scopes[0]: "self" is resolved by the ghit server',
    ),
    (
        agent_with('timeout = "5 minutes"'),
        'agents.codex.timeout: "5 minutes" is not a duration (try "5m")',
    ),
    (agent_with("timeout = 0"), "agents.codex.timeout: 0 is not longer than zero"),
    (agent_with('enabled = "yes"'), 'agents.codex.enabled: expected true or false, got "yes"'),
    (agent_with('budget = "20 per hour"'), 'agents.codex.budget: "20 per hour" is not a budget'),
    (agent_with('budget = "0/1h"'), 'agents.codex.budget: "0/1h" allows no run at all'),
    (agent_with("env = { A = 1 }"), "agents.codex.env.A: expected a string, got 1"),
    (agent_with("comand = []"), "agents.codex.comand: unknown key (did you mean 'cmd'?)"),
    (agent_with('agent_prompt = "{% for %}"'), "agents.codex.agent_prompt: line 1: "),
    (agent_with('agent_prompt_file = "missing.j2"'), "agents.codex.agent_prompt_file: "),
    (
        agent_with('agent_prompt = "x"\nagent_prompt_file = "p.j2"'),
        "agents.codex.agent_prompt_file: agent_prompt and agent_prompt_file exclude each other",
    ),
    (
        '[ghit-work]\nagent_prompt = "x"\nagent_prompt_file = "p.j2"\n' + AGENT,
        "ghit-work.agent_prompt_file: agent_prompt and agent_prompt_file exclude each other",
    ),
    ('[ghit-work]\nagent_prompt = "{{ x"\n' + AGENT, "ghit-work.agent_prompt: line 1: "),
    (
        agent_with("session_id_pattern = '(unclosed'"),
        "agents.codex.session_id_pattern: not a valid regular expression: ",
    ),
    (
        agent_with("session_id_pattern = 'no group'"),
        "agents.codex.session_id_pattern: needs a group for the session id",
    ),
    (
        agent_with('resume_cmd = ["codex", "resume", "{session_id}"]'),
        "agents.codex.resume_cmd: needs session_id_pattern",
    ),
    (
        AGENT.replace("[agents.codex]", '[agents."bad name!"]'),
        "agents.bad name!: invalid agent name",
    ),
    (
        AGENT + "\n" + AGENT.replace("[agents.codex]", "[agents.Codex]"),
        "agents.Codex: duplicate agent name (same as agents.codex)",
    ),
    (AGENT + "\n" + AGENT, "invalid TOML: "),
    ("[agents]\ncodex = 3\n", "agents.codex: expected a table, got 3"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_INPUTS)
def test_each_mistake_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    (tmp_path / "p.j2").write_text("fine")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'ghit-work.toml'}: {expected}")
    assert "\n" not in message


def test_a_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 2"):
        load_config(write(tmp_path, "[ghit-work]\nlimit = = 3\n"))


def test_a_jinja_error_in_a_prompt_file_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "p.j2").write_text("fine\n{% if %}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, agent_with('agent_prompt_file = "p.j2"')))
    assert "agents.codex.agent_prompt_file: " in str(caught.value)
    assert f"{(tmp_path / 'p.j2').resolve()}: line 2:" in str(caught.value)


@pytest.mark.parametrize(("text", "expected"), BAD_INPUTS)
def test_the_real_command_prints_one_line_and_exits_2(
    tmp_path: Path, text: str, expected: str
) -> None:
    (tmp_path / "p.j2").write_text("fine")
    write(tmp_path, text)
    # Every case through `check`; a third of them through the daemon's start too (same loader).
    runs = [["check"], ["--drain"]] if BAD_INPUTS.index((text, expected)) % 3 == 0 else [["check"]]
    for args in runs:
        result = ghit_work(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.startswith(f"ghit-work: error: ghit-work.toml: {expected}")
        assert result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    result = ghit_work("check", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "ghit-work: error: ghit-work.toml: no such file (write an example with "
        '"ghit-work init", or pass -c PATH)\n'
    )


def test_an_unreadable_config_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, "other.toml")
    path.chmod(0)
    if os.access(path, os.R_OK):
        path.write_bytes(b"\xff\xfe not utf-8")  # root reads anything: use undecodable bytes
        path.chmod(0o644)
    result = ghit_work("check", "-c", "other.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("ghit-work: error: other.toml: ")
    assert result.stderr.count("\n") == 1


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    result = ghit_work("-c", "conf", "check", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        "ghit-work: error: conf: is a directory, not a config file\n",
    )
