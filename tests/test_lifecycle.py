"""Supervision, durable state, reload and signals, with real processes and real signals."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import GHIT_WORK, Running, Setup, event, ghit_work, poll, write_events

SLOW = {"SLEEP": "60"}


def agent_env(setup: Setup, **extra: str) -> dict[str, str]:
    return {"RECORD": str(setup.records), **extra}


def test_a_restarted_stream_resumes_exactly_after_the_last_event(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--exit-after", "2", "--exit-status", "1"])
    write_events(setup.events, [event(i) for i in range(1, 8)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert setup.delivered("a") == [1, 2, 3, 4, 5, 6, 7]
    err = result.stderr
    assert "--last-event-id 2" in err and "--last-event-id 4" in err and "--last-event-id 6" in err
    assert (
        "tail-events: exited with status 1 (error: stream closed after 2 events (injected))" in err
    )
    assert "tail-events: retry in " in err and "retry window used) after exit status 1" in err


def test_the_retry_window_runs_out_with_exit_3(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--fail-at-start"], retry="2s")
    started = time.monotonic()
    result = ghit_work(cwd=setup.path)
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert (
        "tail-events: gave up: the stream was not healthy again within the 2s retry window"
        in result.stderr
    )
    assert "cannot connect to the ghit server" in result.stderr
    assert 1.5 < elapsed < 15, "it gives up about when the window ends"


def test_a_tail_command_that_does_not_exist_is_said_plainly_then_retried(setup: Setup) -> None:
    """Issue 26: said plainly at once, naming ghit-work.tail_cmd; SPEC §4: then retried
    like any tail-events that cannot start, and exit 3 once the window is used up."""
    setup.write_config({"a": {}}, retry="1s")
    config = setup.config.read_text().replace(
        json.dumps(str(Path(sys.executable).parent / "ghit-work-replay")),
        json.dumps("/nonexistent/ghit-cli"),
    )
    setup.config.write_text(config)
    result = ghit_work(cwd=setup.path, timeout=20)
    assert result.returncode == 3, result.stderr
    first = result.stderr.splitlines()[0]
    assert (
        "WARNING tail-events: ghit-work.toml: ghit-work.tail_cmd: /nonexistent/ghit-cli: "
        "no such file" in first
    ), first
    assert "retry in" in result.stderr and "gave up" in result.stderr


def test_sighup_adds_an_agent_without_interrupting_a_running_one(setup: Setup) -> None:
    setup.write_config({"a": {"env": agent_env(setup, SLEEP="2")}}, tail=["--follow"])
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(lambda: setup.delivered("a") == [1], what="a to start")
        setup.write_config(
            {"a": {"env": agent_env(setup, SLEEP="2")}, "b": {"event_kinds": ["pull-created"]}},
            tail=["--follow"],
        )
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("config reloaded: 2 of 2 agents enabled; added: b; removed: none")
        daemon.wait_for("restarting tail-events from event 1")
        write_events(setup.events, [event(2, kind="pull-created")])
        poll(lambda: setup.delivered("b") == [2], what="b to get its event")
        text = daemon.wait_for("agent a: working -> idle")
        assert "agent a: working -> idle, exit 0" in text, "a's run was not interrupted"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert setup.delivered("a") == [1]


def test_an_invalid_config_on_sighup_keeps_the_old_one(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--follow"])
    with Running(setup.path) as daemon:
        daemon.wait_for("tail-events: started")
        good = setup.config.read_text()
        setup.config.write_text(good + "\n[agents.b]\ncmd = []\n")
        daemon.signal(signal.SIGHUP)
        text = daemon.wait_for("config not reloaded, the old one stays in force: ")
        assert "ghit-work.toml: agents.b.username: missing (required for every agent)" in text
        write_events(setup.events, [event(1)])
        poll(lambda: setup.delivered("a") == [1], what="the old config to keep working")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_the_command_line_limit_survives_a_reload(setup: Setup) -> None:
    agents = {
        "a": {"env": agent_env(setup, SLEEP="0.5")},
        "b": {"env": agent_env(setup, SLEEP="0.5")},
    }
    setup.write_config(agents, tail=["--follow"], limit=5)
    with Running(setup.path, "--limit", "1") as daemon:
        daemon.wait_for("tail-events: started")
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("config reloaded")
        write_events(setup.events, [event(1)])
        poll(lambda: len(setup.runs()) == 2 and len(_ends(setup)) == 2, what="both runs")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        assert "agent b: idle -> queued" in daemon.text or "agent a: idle -> queued" in daemon.text
    starts = sorted(run["start"] for run in setup.runs())
    assert starts[1] >= min(_ends(setup)), "with --limit 1 the two runs never overlap"


def _ends(setup: Setup) -> list[float]:
    path = Path(str(setup.records) + ".end")
    return (
        [json.loads(line)["end"] for line in path.read_text().splitlines()] if path.exists() else []
    )


REDELIVERY_PROMPT = "{{ redelivered }}:{% for e in events %}{{ e.id }} {% endfor %}"


def batches(setup: Setup, agent: str) -> list[tuple[str, list[int]]]:
    out = []
    for run in setup.runs():
        if run["agent"] == agent:
            flag, _, ids = run["prompt"].partition(":")
            out.append((flag, [int(i) for i in ids.split()]))
    return out


def test_sigterm_saves_queued_events_and_the_next_start_delivers_them_first(setup: Setup) -> None:
    setup.write_config(
        {"a": {"env": agent_env(setup, **SLOW)}}, tail=["--follow"], prompt=REDELIVERY_PROMPT
    )
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(lambda: batches(setup, "a") == [("False", [1])], what="the first run")
        write_events(setup.events, [event(2), event(3)])
        poll(
            lambda: (
                "3" in (setup.path / ".ghit-work" / "state.json").read_text()
                or _journal_has(setup, 3)
            ),
            what="events 2 and 3 journaled",
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        text = daemon.text
    assert "agent a: working -> idle, killed by SIGTERM" in text
    assert "saved 3 undelivered event(s)" in text
    setup.write_config({"a": {}}, prompt=REDELIVERY_PROMPT)
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert "3 saved event(s) to deliver first, 1 of them redelivered" in result.stderr
    assert "--last-event-id 3" in result.stderr
    assert batches(setup, "a")[1:] == [("True", [1, 2, 3])]


def _journal_has(setup: Setup, ident: int) -> bool:
    return any(
        f'"id": {ident},' in p.read_text() or f'"id":{ident},' in p.read_text()
        for p in (setup.path / ".ghit-work").glob("journal-*.jsonl")
    )


def test_kill_9_mid_run_then_restart_redelivers_the_interrupted_batch(setup: Setup) -> None:
    setup.write_config(
        {"a": {"env": agent_env(setup, **SLOW)}, "b": {}},
        tail=["--follow"],
        prompt=REDELIVERY_PROMPT,
    )
    write_events(setup.events, [event(1), event(2)])
    with Running(setup.path) as daemon:
        poll(lambda: batches(setup, "a") and len(batches(setup, "b")) >= 1, what="runs")
        poll(lambda: sum(len(ids) for _, ids in batches(setup, "b")) == 2, what="b done")
        daemon.wait_for("agent b: working -> idle", count=len(batches(setup, "b")))
        journals = (setup.path / ".ghit-work").glob
        done = len(batches(setup, "b"))  # journaled a moment after its status line
        poll(
            lambda: sum(j.read_bytes().count(b'"done":"b"') for j in journals("journal-*")) == done
        )
        daemon.signal(signal.SIGKILL)
        daemon.wait()
    first = batches(setup, "a")[0]
    assert first[0] == "False" and first[1][0] == 1  # [1] or [1, 2]: however the reads fell
    setup.write_config({"a": {}, "b": {}}, prompt=REDELIVERY_PROMPT)
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    again = batches(setup, "a")[1:]
    assert again == [("True", [1, 2])], "the interrupted batch comes again, marked redelivered"
    assert sum(len(ids) for _, ids in batches(setup, "b")) == 2, "b's finished batches do not"


def test_a_corrupt_state_file_is_reported_and_set_aside(setup: Setup) -> None:
    state = setup.path / ".ghit-work"
    state.mkdir()
    (state / "state.json").write_text("\x00garbage{")
    setup.write_config({"a": {}})
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert "state.json: unreadable" in result.stderr and "kept as" in result.stderr
    assert list(state.glob("state.json.corrupt-*"))
    assert setup.delivered("a") == [1]


def test_a_second_instance_on_the_same_state_dir_refuses_to_start(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--follow"])
    with Running(setup.path) as first:
        first.wait_for("tail-events: started")
        second = ghit_work(cwd=setup.path, timeout=20)
        assert second.returncode == 1
        assert "is in use by another ghit-work (pid " in second.stderr
        assert second.stderr.count("\n") == 1
        first.signal(signal.SIGTERM)
        assert first.wait() == 0


def test_a_changed_subscription_restarts_the_stream_with_no_gap_or_duplicate(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--follow"])
    write_events(setup.events, [event(1), event(2, kind="pull-created")])
    with Running(setup.path) as daemon:
        poll(lambda: setup.delivered("a") == [1], what="event 1")
        setup.write_config(
            {"a": {"event_kinds": ["reply-created", "pull-created"]}}, tail=["--follow"]
        )
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("tail-events: started", count=2)
        write_events(setup.events, [event(3), event(4, kind="pull-created")])
        # The cursor is the last event received (1): event 2, which the old subscription
        # filtered out, comes with the new one; nothing is missed and nothing comes twice.
        poll(lambda: setup.delivered("a") == [1, 2, 3, 4], what="events 2 to 4 once each")
        assert "restarting tail-events from event 1" in daemon.text
        assert "--last-event-id 1" in daemon.text
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert setup.delivered("a") == [1, 2, 3, 4]


def test_a_second_interrupt_kills_agents_at_once(setup: Setup) -> None:
    script = setup.path / "stubborn.py"
    script.write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open('started', 'w').close()\ntime.sleep(60)\n"
    )
    setup.write_config({"a": {"cmd": [sys.executable, str(script)]}}, tail=["--follow"])
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(lambda: (setup.path / "started").exists(), what="the agent to start")
        daemon.signal(signal.SIGINT)
        daemon.wait_for("SIGINT received: stopping")
        daemon.signal(signal.SIGINT)
        assert daemon.wait(timeout=4) == 0, "no 5 s grace after the second interrupt"
        assert "second interrupt: killing agents now" in daemon.text
        assert "killed by SIGKILL" in daemon.text


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(),
    reason="needs root and unshare for a new PID namespace",
)
def test_as_pid_1_it_reaps_orphans_and_stops_on_sigterm(setup: Setup) -> None:
    orphaner = setup.path / "orphaner.sh"
    orphaner.write_text(
        "#!/bin/sh\n"
        "cat > /dev/null\n"
        "if [ ! -e spawned ]; then touch spawned; setsid sh -c 'sleep 0.3' & exit 0; fi\n"
        "sleep 1\n"
        "zombies=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l)\n"
        "echo $zombies > zombies\n"
    )
    setup.write_config(
        {"a": {"cmd": ["sh", str(orphaner)], "workdir": str(setup.path)}},
        tail=["--follow", "--delay", "1.5"],
    )
    write_events(setup.events, [event(1), event(2)])
    process = subprocess.Popen(
        ["unshare", "--fork", "--pid", "--mount-proc", GHIT_WORK],
        cwd=setup.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        poll(lambda: (setup.path / "zombies").exists(), what="the second run's zombie count")
        assert (setup.path / "zombies").read_text().strip() == "0", "the orphan was reaped"
        init = poll(lambda: _child_of(process.pid), what="the namespace's PID 1")
        assert init is not None
        os.kill(init, signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        err = process.stderr.read()
        process.stderr.close()
    assert "SIGTERM received: stopping" in err


def _child_of(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def test_a_removed_agent_keeps_its_queued_events_until_it_comes_back(setup: Setup) -> None:
    both = {"a": {}, "b": {"env": agent_env(setup, SLEEP="1.5")}}
    setup.write_config(both, tail=["--follow"])
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(lambda: setup.delivered("b") == [1], what="b to start on event 1")
        write_events(setup.events, [event(2)])
        poll(lambda: setup.delivered("a") == [1, 2], what="a to get event 2")
        setup.write_config({"a": {}}, tail=["--follow"])
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("agent b: removed: its 1 queued event(s) are kept in state_dir")
        daemon.wait_for("agent b: working -> disabled, exit 0")
        write_events(setup.events, [event(3)])
        poll(lambda: setup.delivered("a") == [1, 2, 3], what="a to get event 3")
        setup.write_config(both, tail=["--follow"])
        daemon.signal(signal.SIGHUP)
        poll(lambda: setup.delivered("b") == [1, 2], what="b to get its kept event back")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_a_failing_template_is_retried_after_a_reload_fixes_it(setup: Setup) -> None:
    """A template that fails is that run's fault (SPEC §11): outcome `error`, retried with
    backoff; the retry after a reload renders the fixed template."""
    retried = {"run_backoff": 1, "run_attempts": 5}
    setup.write_config({"a": {"agent_prompt": "{{ nope }}", **retried}}, tail=["--follow"])
    write_events(setup.events, [event(1), event(2)])
    with Running(setup.path) as daemon:
        text = daemon.wait_for("agent a: working -> retrying, error: prompt template")
        assert "'nope' is undefined" in text
        setup.write_config({"a": retried}, tail=["--follow"])
        daemon.signal(signal.SIGHUP)
        poll(lambda: setup.delivered("a") == [1, 2], what="the kept events after the fix")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_a_hanging_stream_still_stops_cleanly(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--hang"])
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(lambda: setup.delivered("a") == [1], what="event 1")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0


def test_a_sigterm_in_the_first_instant_stops_it_cleanly(setup: Setup) -> None:
    """A stop during start-up (imports, config) is held, then handled: a clean exit 0, never
    the default action's death (a container runtime would follow it with SIGKILL)."""
    setup.write_config({"a": {}}, tail=["--follow"])
    write_events(setup.events, [event(1)])

    def blocked(pid: int) -> bool:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigBlk:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
        return False

    for attempt in range(3):
        process = subprocess.Popen(
            [GHIT_WORK],
            cwd=setup.path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        poll(functools.partial(blocked, process.pid), 10, "the signals to be held")
        process.send_signal(signal.SIGTERM)  # while it is still importing
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, f"attempt {attempt}: {process.returncode}: {err}"
        assert "stop: SIGTERM received: stopping" in err
        assert "Traceback" not in err


EXIT_NOW = """
import atexit, sys, threading
from ghitwork.app.entry import exit_now
atexit.register(lambda: print("atexit ran"))
print("buffered output,", end=" ")
if sys.argv[1] == "thread":
    done = threading.Event()
    threading.Thread(target=done.wait).start()
    exit_now(3)
    print("returned:", end=" ")
    done.set()
else:
    exit_now(3)
    print("never printed")
"""


@pytest.mark.parametrize("case", ["alone", "thread"])
def test_a_command_ends_without_teardown_only_once_everything_is_written(case: str) -> None:
    """`exit_now` skips the interpreter's teardown, after the atexit handlers and with
    buffered output flushed; with another thread still running it returns instead."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    result = subprocess.run(
        [sys.executable, "-c", EXIT_NOW, case], env=env, capture_output=True, text=True
    )
    if case == "alone":
        assert (result.returncode, result.stdout) == (3, "buffered output, atexit ran\n")
    else:
        assert (result.returncode, result.stdout) == (0, "buffered output, returned: atexit ran\n")
