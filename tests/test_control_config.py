"""SPEC §13's config: `[[notify]]`, `http_token_file`, `http_auth`, `needs_input_pattern`,
each mistake one line naming the file and the key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import GHIT_WORK
from msgspec.structs import replace

from ghitwork.app import checks
from ghitwork.config.load import load_config
from ghitwork.config.model import ConfigError, secret_values

AGENT = """
[agents.codex]
cmd = ["codex", "exec"]
username = "codex"
event_scopes = ["repo:teams/ghit/ghit"]
event_kinds = ["reply-created"]
"""
TOKEN = "0123456789abcdef0123456789abcdef"


def load(tmp_path: Path, text: str) -> object:
    (tmp_path / "token").write_text(TOKEN + "\n")
    path = tmp_path / "ghit-work.toml"
    path.write_text(text)
    return load_config(path)


def test_notify_tables_the_token_and_the_question_pattern_are_read(tmp_path: Path) -> None:
    text = (
        '[ghit-work]\nhttp_token_file = "token"\nhttp_auth = "all"\n'
        + AGENT
        + 'needs_input_pattern = "NEEDS INPUT: (?P<question>.*)"\n'
        + '[[notify]]\nurl = "json://127.0.0.1:9/hook"\non = ["dead-letter", "needs-input"]\n'
        + '[[notify]]\nurl = "slack://T0000/B0000/XXXXXXXXXXXXXXXX"\non = ["paused"]\n'
        + 'agents = ["codex"]\n'
    )
    config = load(tmp_path, text)
    assert config.http_token == TOKEN and config.http_auth == "all"  # type: ignore[attr-defined]
    first, second = config.notify  # type: ignore[attr-defined]
    assert first.on == {"dead-letter", "needs-input"} and first.agents is None
    assert first.wants("dead-letter", "codex") and not first.wants("paused", "codex")
    assert second.wants("paused", "codex") and not second.wants("paused", "other")
    assert second.wants("paused", None)  # a cause of no agent: every target that wants it
    pattern = config.agents[0].needs_input_pattern  # type: ignore[attr-defined]
    assert pattern.search("NEEDS INPUT: which branch?")["question"] == "which branch?"
    secrets = secret_values({}, config)  # type: ignore[arg-type]
    assert TOKEN in secrets and "XXXXXXXXXXXXXXXX" in secrets


MISTAKES = [
    ('[[notify]]\non = ["paused"]\n', "notify[0].url: missing"),
    ('[[notify]]\nurl = "hooks.example"\non = ["paused"]\n', "notify[0].url: not an Apprise URL"),
    ('[[notify]]\nurl = "json://h/p"\n', "notify[0].on: missing"),
    (
        '[[notify]]\nurl = "json://h/p"\non = ["dead-letters"]\n',
        "notify[0].on: unknown cause 'dead-letters' (did you mean 'dead-letter'?)",
    ),
    (
        '[[notify]]\nurl = "json://h/p"\non = ["paused"]\nagents = ["nobody"]\n',
        "notify[0].agents: no agent 'nobody' in this config",
    ),
    ('[[notify]]\nurl = "json://h/p"\non = ["paused"]\nat = 1\n', "notify[0].at: unknown key"),
    ("notify = 3\n", "notify: expected [[notify]] tables"),
]


@pytest.mark.parametrize(("extra", "expected"), MISTAKES)
def test_a_notify_mistake_names_its_table_and_key(
    tmp_path: Path, extra: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            tmp_path,
            (extra if extra.startswith("notify") else "")
            + AGENT
            + ("" if extra.startswith("notify") else extra),
        )
    assert f"ghit-work.toml: {expected}" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ('http_auth = "all"', 'ghit-work.http_auth: "all" needs http_token_file'),
        ('http_auth = "reads"', 'ghit-work.http_auth: expected "control"'),
        ('http_token_file = "missing"', "ghit-work.http_token_file: "),
        ('http_token_file = "empty"', "ghit-work.http_token_file: "),
        ('http_token_file = "words"', "ghit-work.http_token_file: "),
        ('http_token_file = "tiny"', "ghit-work.http_token_file: "),
    ],
)
def test_a_control_mistake_names_its_key(tmp_path: Path, top: str, expected: str) -> None:
    (tmp_path / "empty").write_text(" \n")
    (tmp_path / "words").write_text("two words\n")
    (tmp_path / "tiny").write_text("abc\n")  # under the redactor's 4: it could not be hidden
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"[ghit-work]\n{top}\n" + AGENT)
    assert f"ghit-work.toml: {expected}" in str(caught.value)


def test_a_short_token_is_taken_and_warned_of_without_showing_it(tmp_path: Path) -> None:
    load(tmp_path, AGENT)
    (tmp_path / "short").write_text("s3cret\n")
    path = tmp_path / "ghit-work.toml"
    path.write_text(
        '[ghit-work]\nhttp_token_file = "short"\n' + AGENT.replace('"codex", "exec"', '"cat"')
    )
    config = load_config(path)
    assert config.http_token == "s3cret"
    warning = checks.weak_token(config)
    assert warning is not None and "only 6 characters" in warning and "s3cret" not in warning
    assert checks.weak_token(replace(config, http_token="0123456789abcdef")) is None
    shown = subprocess.run(
        [GHIT_WORK, "check", "-c", str(path)], capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, shown.stderr  # a warning (ghit-cli's too, if missing)
    assert f"ghit-work: warning: {warning}" in shown.stderr.splitlines()


def test_a_question_pattern_names_only_its_group(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, AGENT + 'needs_input_pattern = "(?P<ask>.*)"\n')
    assert "agents.codex.needs_input_pattern: unknown named group 'ask'" in str(caught.value)


def test_a_notify_urls_credentials_are_secrets_but_its_addresses_are_not(tmp_path: Path) -> None:
    url = (
        "mailtos://alerts:pw-long-secret@smtp.company.com?to=oncall@company.com&from=gw@company.com"
    )
    text = AGENT + f'[[notify]]\nurl = "{url}"\non = ["paused"]\n'
    config = load(tmp_path, text)
    secrets = secret_values({}, config)  # type: ignore[arg-type]
    assert "pw-long-secret" in secrets and url in secrets
    assert not any("company.com" in s for s in secrets if s != url)
    assert not any(s in "ghit-work started; https://ghit.example/t/1" for s in secrets)
