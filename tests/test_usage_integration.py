"""SPEC §9 through the real command: usage per run in status lines and records, totals kept
across restarts, session running totals, cost and token budgets."""

from __future__ import annotations

import json
import signal
from typing import Any

from conftest import Running, Setup, event, ghit_work, poll, write_events

# Prints what USAGE says (a format string: {n} is the run's number, from 1), then exits EXIT.
AGENT = """\
import os, sys
sys.stdin.read()
record = os.environ["RECORD"]
n = 1 + (sum(1 for _ in open(record)) if os.path.exists(record) else 0)
with open(record, "a") as f:
    f.write("run\\n")
print(os.environ["USAGE"].format(n=n), flush=True)
sys.exit(int(os.environ.get("EXIT", "0")))
"""
RUN_PATTERN = (
    r"used (?P<input_tokens>[\d,]+) in \((?P<cached_tokens>\d+) cached\), "
    r"(?P<output_tokens>[\d_]+) out"
)
COST_PATTERN = r"cost \$(?P<cost_usd>[\d.]+)"


def configure(setup: Setup, usage: str, follow: bool = False, **settings: Any) -> None:
    setup.agent_py.write_text(AGENT)
    env = {"RECORD": str(setup.records), "USAGE": usage, **settings.pop("env", {})}
    agent = {
        "env": env,
        "usage_patterns": [RUN_PATTERN, COST_PATTERN],
        "logdir": "logs",
        **settings,
    }
    setup.write_config({"a": agent}, tail=["--follow"] if follow else [])


def ledger(setup: Setup) -> dict[str, Any]:
    state = json.loads((setup.path / ".ghit-work" / "state.json").read_text())
    usage: dict[str, Any] = state["usage"]["a"]
    return usage


def records(setup: Setup) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((setup.path / "logs").glob("*.json"))]


def test_each_runs_usage_is_in_its_status_line_and_record_and_totals_survive(
    setup: Setup,
) -> None:
    configure(setup, "used 1,200 in (200 cached), 3_000 out; cost $0.25")
    write_events(setup.events, [event(1)])
    first = ghit_work("--drain", cwd=setup.path)
    assert first.returncode == 0, first.stderr
    assert "exit 0 after" in first.stderr
    assert "; 1,200 in (200 cached), 3,000 out, $0.2500" in first.stderr
    [record] = records(setup)
    assert (record["input_tokens"], record["cached_tokens"], record["output_tokens"]) == (
        1200,
        200,
        3000,
    )
    assert record["cost_usd"] == 0.25
    write_events(setup.events, [event(2)])
    second = ghit_work("--drain", "--log-format", "json", cwd=setup.path)
    assert second.returncode == 0, second.stderr
    finished = [
        json.loads(line) for line in second.stderr.splitlines() if '"from": "working"' in line
    ]
    assert [(f["input_tokens"], f["output_tokens"], f["cost_usd"]) for f in finished] == [
        (1200, 3000, 0.25)
    ]
    totals = ledger(setup)
    assert totals["runs"] == 2 and totals["total"]["input_tokens"] == 2400
    assert totals["total"]["cost_usd"] == 0.5
    assert sum(day["cost_usd"] for day in totals["days"].values()) == 0.5
    state_text = (setup.path / ".ghit-work" / "state.json").read_text()
    assert "used 1,200" not in state_text, "no output, no prompt in the usage store"


def test_session_running_totals_count_each_run_once_and_a_price_gives_the_cost(
    setup: Setup,
) -> None:
    # A codex-like agent: every run prints the session's total so far (1000 x its number).
    configure(
        setup,
        "session S1: used {n}000 in (0 cached), {n}00 out",
        usage_totals="session",
        session_id_pattern=r"session (?P<session_id>S\d+)",
        price={"input": 1.0, "output": 10.0},
    )
    for ident in (1, 2, 3):
        write_events(setup.events, [event(ident)])
        result = ghit_work("--drain", cwd=setup.path)
        assert result.returncode == 0, result.stderr
        assert "; 1,000 in, 100 out, $0.0020" in result.stderr, "the growth, not the total"
    assert [(r["input_tokens"], r["output_tokens"]) for r in records(setup)] == [(1000, 100)] * 3
    assert ledger(setup)["total"]["input_tokens"] == 3000
    assert ledger(setup)["sessions"]["S1"]["input_tokens"] == 3000


def test_a_failed_run_still_records_what_it_spent(setup: Setup) -> None:
    configure(setup, "used 10 in (0 cached), 1 out; cost $0.5", run_attempts=1, env={"EXIT": "1"})
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert "exit 1 after" in result.stderr and "; 10 in, 1 out, $0.5000" in result.stderr
    assert ledger(setup)["total"]["cost_usd"] == 0.5


def test_a_pattern_that_never_matches_breaks_nothing(setup: Setup) -> None:
    configure(setup, "no numbers here")
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert records(setup)[0]["cost_usd"] is None
    state = json.loads((setup.path / ".ghit-work" / "state.json").read_text())
    assert state["usage"] == {}, "nothing charged"


def test_a_cost_budget_throttles_and_says_which_budget(setup: Setup) -> None:
    configure(setup, "used 1 in (0 cached), 1 out; cost $1.00", follow=True, cost_budget="1.50/3s")
    with Running(setup.path) as daemon:
        daemon.wait_for("tail-events: started")
        for ident in (1, 2, 3):
            write_events(setup.events, [event(ident)])
            daemon.wait_for(f"[{ident}]; 1 in, 1 out, $1.0000")
        text = daemon.wait_for("-> throttled")
        assert "cost_budget 1.50/3s ($2.00 spent) used up, runs again at" in text
        poll(lambda: setup.records.read_text().count("run") == 3, timeout=10, what="third run")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    # The run that crossed the budget was not stopped: overshoot by at most one run.
    assert text.count("$1.0000") >= 2


def test_a_token_budget_throttles_too(setup: Setup) -> None:
    configure(setup, "used 600 in (0 cached), 0 out", follow=True, token_budget="1000/60s")
    with Running(setup.path) as daemon:
        daemon.wait_for("tail-events: started")
        write_events(setup.events, [event(1)])
        daemon.wait_for("[1]; 600 in, 0 out")
        write_events(setup.events, [event(2)])
        daemon.wait_for("[2]; 600 in, 0 out")
        write_events(setup.events, [event(3)])
        text = daemon.wait_for("-> throttled")
        assert "token_budget 1000/1m (1,200 tokens spent) used up" in text
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert setup.records.read_text().count("run") == 2, "event 3 waits, saved"


def test_kill_9_keeps_usage_totals_exact(setup: Setup) -> None:
    configure(setup, "used 100 in (0 cached), 1 out; cost $0.01", follow=True)
    with Running(setup.path) as daemon:
        daemon.wait_for("tail-events: started")
        for ident in (1, 2):
            write_events(setup.events, [event(ident)])
            daemon.wait_for(f"[{ident}]; 100 in")
        daemon.signal(signal.SIGKILL)
        daemon.wait()
    configure(setup, "used 100 in (0 cached), 1 out; cost $0.01")
    write_events(setup.events, [event(3)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert ledger(setup)["runs"] == 3 and ledger(setup)["total"]["input_tokens"] == 300
