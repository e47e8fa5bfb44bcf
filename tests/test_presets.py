"""`init --preset`: each preset's patterns against what the real CLIs printed (tests/data)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ghitwork.app.commands import init
from ghitwork.config.load import load_config
from ghitwork.config.model import AgentConfig
from ghitwork.model.usage import Ledger, Usage, charge
from ghitwork.run.archive import Redactor
from ghitwork.run.output import Findings, Patterns, Stream

DATA = Path(__file__).parent / "data" / "agents"


def preset(tmp_path: Path, name: str) -> AgentConfig:
    init(tmp_path / "ghit-work.toml", io.StringIO(), [name])
    config = load_config(tmp_path / "ghit-work.toml")
    [agent] = config.agents
    return agent


def read(agent: AgentConfig, capture: str) -> Findings:
    findings = Findings()
    patterns = Patterns(agent.session_id_pattern, agent.rate_limit_pattern, agent.usage_patterns)
    stream = Stream("stdout", None, Redactor(()), patterns, findings, None)
    stream.chunk((DATA / capture).read_bytes())
    stream.close()
    return findings


def test_the_codex_preset_reads_session_ids_and_per_run_usage(tmp_path: Path) -> None:
    agent = preset(tmp_path, "codex")
    assert agent.usage_totals == "session" and agent.price is None and agent.timeout
    ledger, runs = Ledger(), []
    for capture in ("codex-json.out", "codex-resume-json.out", "codex-resume2-json.out"):
        found = read(agent, capture)
        assert found.session_id == "01a2160e-6cd6-7503-9008-d7cddb78e548"
        made = charge(
            "codex",
            found.tally,
            agent.usage_totals,
            agent.price,
            found.session_id,
            ledger.session_total("codex", found.session_id),
            0.0,
        )
        assert made is not None
        ledger.apply(made)
        runs.append(made.usage)
    assert runs == [Usage(1234, 56, 200, 0.0)] * 3, "per run, not the session's running total"
    assert agent.resume_cmd is not None and "{session_id}" in agent.resume_cmd
    assert agent.cmd[-1] == "-" and agent.resume_cmd[-1] == "-", "the prompt comes on stdin"


def test_the_claude_preset_reads_session_ids_usage_and_cost(tmp_path: Path) -> None:
    agent = preset(tmp_path, "claude")
    for capture in ("claude-stream.out", "claude-resume-stream.out"):
        found = read(agent, capture)
        assert found.session_id == "8e8a1866-4b02-45d2-92ae-78776fe82507"
        made = charge("claude", found.tally, "run", agent.price, found.session_id, None, 0.0)
        assert made is not None
        # every input token (1234 uncached + 300 cache writes + 200 cache reads), of which
        # 200 from the cache; the cost as Claude Code reported it
        assert made.usage == Usage(1734, 56, 200, 0.009545000000000001)


@pytest.mark.parametrize(
    ("name", "limited", "failed"),
    [
        ("codex", "codex-429-json.out", "codex-500-json.out"),
        ("claude", "claude-429-stream.out", "claude-500-stream.out"),
    ],
)
def test_each_preset_tells_a_rate_limit_from_another_failure(
    tmp_path: Path, name: str, limited: str, failed: str
) -> None:
    agent = preset(tmp_path, name)
    assert read(agent, limited).rate_limited
    assert not read(agent, failed).rate_limited


def test_a_failed_claude_run_still_records_what_it_spent(tmp_path: Path) -> None:
    agent = preset(tmp_path, "claude")
    found = read(agent, "claude-429-stream.out")
    made = charge("claude", found.tally, "run", None, None, None, 0.0)
    assert made is not None and made.usage == Usage(0, 0, 0, 0.0), "it reported zero"


# What each CLI printed at a subscription's usage limit (stdout, recorded through ghit-work by
# `nox -s real-agents`; docs/agents.md#quota-windows), and the `reset` the preset reads in it.
USAGE_LIMITS = {
    "codex": (
        '{"type":"thread.started","thread_id":"01a23ca1-37a2-77f2-97b0-726bd2019b0d"}\n'
        '{"type":"turn.started"}\n'
        '{"type":"error","message":"You\u2019ve hit your usage limit. Try again at 6:59 PM."}\n'
        '{"type":"turn.failed","error":{"message":"You\u2019ve hit your usage limit. Try again'
        ' at 6:59 PM."}}\n',
        "at 6:59 PM",
    ),
    "claude": (
        '{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1796493585,'
        '"rateLimitType":"seven_day","isUsingOverage":false},"session_id":'
        '"33ceccfb-f959-47b9-9258-97e367daa90f"}\n'
        '{"type":"result","subtype":"success","is_error":true,"api_error_status":429,'
        '"num_turns":1,"result":"You\'ve hit your weekly limit \u00b7 resets Dec 5, 12:59pm '
        '(America/New_York)","session_id":"33ceccfb-f959-47b9-9258-97e367daa90f",'
        '"total_cost_usd":0}\n',
        "Dec 5, 12:59pm (America/New_York)",
    ),
}


@pytest.mark.parametrize("name", sorted(USAGE_LIMITS))
def test_each_preset_reads_when_its_clis_usage_limit_resets(tmp_path: Path, name: str) -> None:
    agent = preset(tmp_path, name)
    output, reset = USAGE_LIMITS[name]
    findings = Findings()
    patterns = Patterns(agent.session_id_pattern, agent.rate_limit_pattern, agent.usage_patterns)
    stream = Stream("stdout", None, Redactor(()), patterns, findings, None)
    stream.chunk(output.encode())
    stream.close()
    assert findings.rate_limited and findings.reset == reset


@pytest.mark.parametrize(("name", "account"), [("codex", "chatgpt-plus"), ("claude", "claude-max")])
def test_each_presets_account_line_uncommented_names_the_account(
    tmp_path: Path, name: str, account: str
) -> None:
    init(tmp_path / "ghit-work.toml", io.StringIO(), [name])
    config = tmp_path / "ghit-work.toml"
    line = f'# account = "{account}"\n'
    assert config.read_text().count(line) == 1
    config.write_text(config.read_text().replace(line, line.removeprefix("# ")))
    [agent] = load_config(config).agents
    assert agent.account == account
