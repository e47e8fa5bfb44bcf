"""SPEC §14 through the real command: a usage limit closes an account until it resets."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import Running, Setup, event, ghit_work, poll, write_events

from ghitwork.flow.accounts import JITTER

LIMITED = """\
import json, os, sys, time
prompt = sys.stdin.read()
name = os.environ["GHIT_WORK_AGENT"]
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "runs.jsonl"), "a") as f:
    f.write(json.dumps({"agent": name, "prompt": prompt, "at": time.time()}) + "\\n")
flag = os.path.join(here, "limited")
if os.path.exists(flag):
    print("You've hit your usage limit. Try again in " + open(flag).read().strip() + ".",
          file=sys.stderr)
    sys.exit(1)
"""
PATTERN = r"usage limit\. Try again in (?P<reset>[^.]+)\."


def start(setup: Setup, tmp: Path, http: bool = False, **extra: object) -> Path:
    agent = tmp / "limited.py"
    agent.write_text(LIMITED)
    common = {
        "cmd": ["python3", str(agent)],
        "rate_limit_pattern": PATTERN,
        "account": "max",
        "run_attempts": 2,
        **extra,
    }
    setup.write_config(
        {"a": common, "b": common},
        tail=["--follow"],
        prompt="{% for e in events %}{{ e.id }} {% endfor %}attempt {{ attempt }}",
        **({"http": "127.0.0.1:0"} if http else {}),
    )
    return tmp / "runs.jsonl"


def runs(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_one_agent_reaching_the_limit_closes_the_account_until_it_resets(
    setup: Setup, tmp_path: Path
) -> None:
    record = start(setup, tmp_path, event_kinds=["reply-created"])
    (tmp_path / "limited").write_text("6 seconds")
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1)])  # both a and b get it; both hit the limit
        daemon.wait_for("account max: usage limit reached")
        daemon.wait_for(": working -> quota", count=1)
        # while closed: events keep batching, no run starts, for either agent
        started = len(runs(record))
        write_events(setup.events, [event(2)])
        daemon.wait_for("-> quota", count=2)

        def states() -> dict[str, Any]:
            status = json.loads(ghit_work("status", "--json", cwd=setup.path).stdout or "{}")
            found = {a["name"]: a for a in status.get("agents", [])}
            return found if {a["state"] for a in found.values()} == {"quota"} else {}

        shown = poll(states, what="both agents in quota")
        assert "quota until" in shown["a"]["problem"] and "account max" in shown["a"]["problem"]
        (tmp_path / "limited").unlink()  # the window resets
        daemon.wait_for("account max: usage limit window over", timeout=60)
        poll(
            lambda: all(
                sorted(
                    int(w)
                    for r in runs(record)
                    if r["agent"] == n
                    for w in str(r["prompt"]).split()[:-2]
                )[-2:]
                == [1, 2]
                for n in ("a", "b")
            ),
            timeout=60,
            what="every event delivered after the reset",
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    every = runs(record)
    assert len(every) >= started
    # no attempt used: the batch after the window is still attempt 1, never a dead letter
    last = [r for r in every if r["agent"] == "a"][-1]
    assert str(last["prompt"]).endswith("attempt 1"), last
    assert "dead letter" not in daemon.text


def test_a_restart_inside_the_window_keeps_the_account_closed(setup: Setup, tmp_path: Path) -> None:
    record = start(setup, tmp_path)
    (tmp_path / "limited").write_text("1 hour")
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1)])
        daemon.wait_for("account max: usage limit reached")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    (tmp_path / "limited").unlink()
    count = len(runs(record))
    with Running(setup.path) as daemon:
        daemon.wait_for("(kept from before the restart)")
        write_events(setup.events, [event(2)])
        daemon.wait_for("-> quota")
        assert len(runs(record)) == count
        status = json.loads(ghit_work("status", "--json", cwd=setup.path).stdout or "{}")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert len(runs(record)) == count
    assert "quota until" in json.dumps(status)


def test_without_a_reset_group_a_rate_limit_retries_as_before(setup: Setup, tmp_path: Path) -> None:
    record = start(setup, tmp_path, rate_limit_pattern=r"usage limit", run_backoff="1s")
    (tmp_path / "limited").write_text("5 minutes")
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1)])
        daemon.wait_for("-> rate-limited", count=2)
        assert "usage limit reached" not in daemon.text
        (tmp_path / "limited").unlink()
        poll(lambda: len(runs(record)) >= 4, what="the retries")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_the_account_window_is_a_metric(setup: Setup, tmp_path: Path) -> None:
    start(setup, tmp_path, http=True)
    (tmp_path / "limited").write_text("1 hour")
    with Running(setup.path) as daemon:
        base = re.findall(r"serving on (\S+)", daemon.wait_for("serving on"))[0]

        def scrape() -> str:
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
                return str(answer.read().decode())

        assert 'ghitwork_quota_until_seconds{account="max"} 0.0' in scrape()
        write_events(setup.events, [event(1)])
        daemon.wait_for("account max: usage limit reached")

        def closed() -> float:
            found = re.search(r'ghitwork_quota_until_seconds\{account="max"\} (\S+)', scrape())
            return float(found.group(1)) if found else 0.0

        until = poll(closed, what="the window in /metrics")
        assert 3600 - 60 < until - time.time() < 3600 + 60
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


LATE = """\
import sys, time
sys.stdin.read()
print("You've hit your usage limit. Try again in 4 seconds.", file=sys.stderr, flush=True)
with open(sys.argv[1], "w") as f:
    f.write(repr(time.time()))
time.sleep(3)  # a wrapper that lingers after its CLI said so
sys.exit(1)
"""


def test_a_reset_is_counted_from_when_it_was_printed_not_from_the_runs_end(
    setup: Setup, tmp_path: Path
) -> None:
    agent, printed = tmp_path / "late.py", tmp_path / "printed"
    agent.write_text(LATE)
    setup.write_config(
        {"a": {"cmd": ["python3", str(agent), str(printed)], "rate_limit_pattern": PATTERN}},
        tail=["--follow"],
    )
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1)])
        daemon.wait_for("account a: usage limit reached", timeout=30)

        def until() -> float | None:
            status = json.loads(ghit_work("status", "--json", cwd=setup.path).stdout or "{}")
            for found in status.get("agents", []):
                if found["state"] == "quota" and found["retry_at"]:
                    return datetime.fromisoformat(found["retry_at"]).timestamp()
            return None

        closed = poll(until, what="a in quota")
        said = float(printed.read_text())
        # "in 4 seconds" from the line (+ 1-3 s of jitter), not from the end 3 s later
        assert said + 4 + JITTER[0] - 0.5 <= closed <= said + 4 + JITTER[1] + 0.5, closed - said
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
