"""The real `ghit-work` command, the tail-events stand-in and real agent scripts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from conftest import (
    GHIT_WORK,
    REPLAY,
    ROOT,
    Setup,
    event,
    ghit_work,
    poll,
    toml_list,
    write_events,
)

TOKEN = "ghit-token-0123456789"


def env_with_token() -> dict[str, str]:
    return {**os.environ, "GHIT_API_TOKEN": TOKEN, "GHIT_API_URL": "https://ghit.example/api"}


def test_quickstart_dispatches_and_ends_by_itself(tmp_path: Path) -> None:
    shutil.copytree(
        ROOT / "examples" / "quickstart",
        tmp_path / "quickstart",
        ignore=shutil.ignore_patterns(".ghit-work", "logs"),
    )
    result = ghit_work("--drain", "-c", "quickstart/ghit-work.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "agent codex: queued -> working, batch of 1 event [101]" in err
    assert "agent codex| --- codex got this prompt:" in err
    assert "agent claude: queued -> working" in err
    assert "resuming session review-" in err, "the second claude batch resumes its session"
    assert "every batch delivered; exiting" in err


def test_prompt_env_and_workdir_reach_the_agent_but_the_token_does_not(setup: Setup) -> None:
    work = setup.path / "work"
    work.mkdir()
    tail_env = setup.path / "tail-env.json"
    wrapper = setup.path / "tail.sh"
    wrapper.write_text(
        f'#!/bin/sh\nprintf \'{{"token": "%s", "url": "%s"}}\' "$GHIT_API_TOKEN" "$GHIT_API_URL"'
        f' > {tail_env}\nexec {REPLAY} "$@"\n'
    )
    wrapper.chmod(0o755)
    setup.write_config(
        {
            "codex": {
                "workdir": "work",
                "logdir": "logs",
                "env": {"RECORD": str(setup.records), "EXTRA": "x1", "SAY": f"I saw {TOKEN}"},
            }
        },
        prompt="agent={{ agent.name }} user={{ agent.username }} "
        "ids={% for e in events %}{{ e.id }},{% endfor %} "
        "session={{ session_id }} resumed={{ resumed }} again={{ redelivered }}",
    )
    config = setup.config.read_text().replace(json.dumps(REPLAY), json.dumps(str(wrapper)))
    setup.config.write_text(config)
    write_events(setup.events, [event(1), event(2, actor="codex"), event(3)])
    result = ghit_work("--drain", cwd=setup.path, env=env_with_token())
    assert result.returncode == 0, result.stderr
    assert json.loads(tail_env.read_text()) == {"token": TOKEN, "url": "https://ghit.example/api"}
    runs = setup.runs()
    assert [run["prompt"] for run in runs] == [
        "agent=codex user=codex ids=1,3, session=None resumed=False again=False",
    ], "one read from the stream is one batch; the agent's own event 2 is never in it"
    for run in runs:
        assert run["cwd"] == str(work)
        assert (run["env_token"], run["env_url"], run["extra"]) == (None, None, "x1")
    archives = list((setup.path / "logs").iterdir())
    assert len(archives) == 4
    for file in archives:
        assert TOKEN not in file.read_text(), file
    assert TOKEN not in result.stderr


def test_resume_uses_the_session_id_and_starts_fresh_after_a_failed_resume(setup: Setup) -> None:
    script = setup.path / "resumable.py"
    script.write_text(
        "import json, os, sys\n"
        "prompt = sys.stdin.read()\n"
        "with open(os.environ['RECORD'], 'a') as f:\n"
        "    f.write(json.dumps({'agent': 'r', 'prompt': prompt, 'argv': sys.argv[1:]}) + '\\n')\n"
        "if sys.argv[1:2] == ['--resume'] and sys.argv[2] == 'S2':\n"
        "    sys.exit(1)\n"
        "n = sum(1 for _ in open(os.environ['RECORD']))\n"
        "print(f'session id: S{n}')\n"
    )
    setup.write_config(
        {
            "r": {
                "cmd": [sys.executable, str(script)],
                "resume_cmd": [sys.executable, str(script), "--resume", "{session_id}"],
                "session_id_pattern": r"session id: (\S+)",
                "run_backoff": "0.1s",
            }
        }
    )
    write_events(setup.events, [event(i) for i in range(1, 5)])
    # Each batch is one event: the stand-in prints them one by one, slowly.
    config = setup.config.read_text().replace(
        json.dumps(str(setup.events)), json.dumps(str(setup.events)) + ', "--delay", "0.4"'
    )
    setup.config.write_text(config)
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    argvs = [run["argv"] for run in setup.runs()]
    assert argvs[0] == []
    assert argvs[1] == ["--resume", "S1"]
    assert argvs[2] == ["--resume", "S2"], "S2 fails without printing an id"
    assert argvs[3] == [], "after a failed resume the retry starts fresh"
    assert [int(w) for run in setup.runs() for w in run["prompt"].split()] == [1, 2, 3, 3, 4]


def test_a_timeout_is_reported_and_the_agent_carries_on(setup: Setup) -> None:
    setup.write_config(
        {
            "slow": {
                "timeout": "1s",
                "run_attempts": 1,
                "env": {"RECORD": str(setup.records), "SLEEP": "30"},
            }
        }
    )
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", cwd=setup.path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "agent slow: working -> idle, timed out after 1" in result.stderr


def test_failures_are_reported_and_never_stop_other_agents(setup: Setup) -> None:
    setup.write_config(
        {
            "missing": {"cmd": ["no-such-agent-binary"], "run_attempts": 1},
            "failing": {"env": {"RECORD": str(setup.records), "EXIT": "3"}, "run_attempts": 1},
            "fine": {},
        }
    )
    write_events(setup.events, [event(1), event(2)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert (
        "agent missing: working -> idle, command not found: no-such-agent-binary" in result.stderr
    )
    assert "agent failing: working -> idle, exit 3 after" in result.stderr
    assert setup.delivered("fine") == [1, 2]
    assert setup.delivered("failing") == [1, 2]


def test_a_chatty_agent_writing_megabytes_does_not_stall_dispatch(setup: Setup) -> None:
    chatty = setup.path / "chatty.py"
    chatty.write_text(
        "import sys\nfor _ in range(3000):\n    print('z' * 1000)\n"
        "sys.stderr.write('e' * 3_000_000)\n"
    )
    setup.write_config(
        {"chatty": {"cmd": [sys.executable, str(chatty)], "logdir": "logs"}, "fine": {}}
    )
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    sizes = {p.suffix: p.stat().st_size for p in (setup.path / "logs").iterdir()}
    assert sizes[".stdout"] == 3000 * 1001 and sizes[".stderr"] == 3_000_000
    assert setup.delivered("fine") == [1]


def test_malformed_and_pretty_printed_input(setup: Setup) -> None:
    setup.write_config({"a": {}})
    write_events(setup.events, [event(1), "this is not json", '{"id": "x", "kind": "k"}', event(2)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert 'malformed input skipped (not JSON): "this is not json"' in result.stderr
    assert "malformed input skipped (no integer id)" in result.stderr
    assert setup.delivered("a") == [1, 2]

    (setup.path / "pretty").mkdir()
    pretty = Setup(setup.path / "pretty")
    pretty.write_config({"a": {}}, tail=["--pretty"])
    write_events(pretty.events, [event(i) for i in range(1, 6)])
    result = ghit_work("--drain", cwd=pretty.path)
    assert result.returncode == 0, result.stderr
    assert "malformed input" not in result.stderr
    assert pretty.delivered("a") == [1, 2, 3, 4, 5]


def test_json_status_lines_are_one_object_each(setup: Setup) -> None:
    setup.write_config({"a": {}})
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", "--log-format", "json", cwd=setup.path)
    assert result.returncode == 0
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"time", "level", "event", "message"} <= set(records[0])
    working = [r for r in records if r["event"] == "agent.state" and r["to"] == "working"]
    assert working[0]["agent"] == "a" and working[0]["event_ids"] == [1]


def test_a_template_that_fails_to_render_fails_its_runs_and_others_carry_on(
    setup: Setup,
) -> None:
    """A template error is that run's fault (SPEC §11): retried, then a dead letter."""
    broken = {"agent_prompt": "{{ events[0].summary.no_such_field }}"}
    setup.write_config({"broken": {**broken, "run_attempts": 2, "run_backoff": 0.1}, "fine": {}})
    write_events(setup.events, [event(1), event(2)])
    result = ghit_work("--drain", cwd=setup.path)
    assert "agent broken: working -> retrying, error: prompt template" in result.stderr
    assert "no_such_field" in result.stderr
    assert "gave up after 2 attempts: dead letter 1" in result.stderr
    assert setup.delivered("fine") == [1, 2]
    assert result.returncode == 0, result.stderr
    assert "(1 dead letter in state_dir" in result.stderr


def test_sigterm_stops_agents_and_exits_0(setup: Setup) -> None:
    setup.write_config(
        {"slow": {"env": {"RECORD": str(setup.records), "SLEEP": "60"}}}, tail=["--follow"]
    )
    write_events(setup.events, [event(1)])
    process = subprocess.Popen([GHIT_WORK], cwd=setup.path, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: setup.runs(), what="the agent to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert process.stderr is not None
    err = process.stderr.read()
    process.stderr.close()
    assert "SIGTERM received: stopping" in err
    assert "agent slow: working -> idle, killed by SIGTERM" in err


def test_tail_events_stderr_is_shown(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--exit-after", "1"])
    write_events(setup.events, [event(1), event(2)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0
    assert "tail-events: error: stream closed after 1 events (injected)" in result.stderr


def test_a_catch_up_comes_in_large_batches_not_one_per_read(setup: Setup) -> None:
    """tail-events `cat`s 50,000 events (20 MB) into the pipe faster than ghit-work reads
    them, 256 KiB (~640 events) a read. Runs wait while more is waiting in the pipe (0.25 s at
    most at a time), so each agent's first batch holds many reads' worth of its events, not
    the first read's; every event still arrives once, in order."""
    count, agents = 50_000, 10
    write_events(
        setup.events,
        (event(i, scopes=[f"thread:teams/ghit/r{i % agents}/1"]) for i in range(1, count + 1)),
    )
    record = setup.path / "record"
    setup.write_config(
        {
            f"a{n}": {
                "cmd": ["sh", "-c", 'cat >> "$RECORD"; echo run >> "$RECORD"'],
                "event_scopes": [f"repo:teams/ghit/r{n}"],
                "env": {"RECORD": f"{record}{n}"},
            }
            for n in range(agents)
        },
        prompt="{% for e in events %}{{ e.id }}\n{% endfor %}",
    )
    config = setup.config.read_text().replace(
        f"tail_cmd = {toml_list([REPLAY, str(setup.events)])}",
        f"tail_cmd = {toml_list(['sh', '-c', f'cat {setup.events}', 'tail'])}",
    )
    setup.config.write_text(config)
    result = ghit_work("--drain", cwd=setup.path, timeout=120)
    assert result.returncode == 0, result.stderr
    for n in range(agents):
        batches = Path(f"{record}{n}").read_text().split("run\n")[:-1]
        ids = [[int(i) for i in batch.split()] for batch in batches]
        assert [i for batch in ids for i in batch] == [
            i for i in range(1, count + 1) if i % agents == n
        ]
        assert len(ids[0]) > 3 * 640 // agents, f"a{n}'s first batch: {len(ids[0])} events"
