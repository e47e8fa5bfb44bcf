"""SPEC §8 through the real command: runs that end at the agent's exit, retries, rate limits,
stalls, dead letters and their redelivery, and single flight across kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import GHIT_WORK, Running, Setup, event, ghit_work, poll, write_events

# An agent that records each run (its attempt and events, from the prompt), then behaves as
# its environment says: FAIL_RUNS (fail its first N runs), SUCCEED_IF (succeed only while this
# file exists), SAY (a line to print before failing), TALK/QUIET (print a line every 0.3 s, or
# nothing, for N seconds), CHILD (leave `sleep N` behind, holding stdout).
AGENT = """\
import json, os, subprocess, sys, time
prompt = sys.stdin.read()
record = os.environ["RECORD"]
runs = sum(1 for _ in open(record)) if os.path.exists(record) else 0
attempt, _, ids = prompt.partition(":")
entry = {"attempt": int(attempt), "ids": [int(i) for i in ids.split()], "pid": os.getpid(),
         "start": time.time()}
if os.environ.get("CHILD"):
    entry["child"] = subprocess.Popen(["sleep", os.environ["CHILD"]]).pid
with open(record, "a") as f:
    f.write(json.dumps(entry) + "\\n")
for _ in range(int(float(os.environ.get("TALK", "0")) / 0.3)):
    print("still working", flush=True)
    time.sleep(0.3)
time.sleep(float(os.environ.get("QUIET", "0")))
failing = runs < int(os.environ.get("FAIL_RUNS", "0"))
if os.environ.get("SUCCEED_IF"):
    failing = not os.path.exists(os.environ["SUCCEED_IF"])
if failing:
    print(os.environ.get("SAY", "it went wrong"), flush=True)
with open(record + ".end", "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "end": time.time()}) + "\\n")
sys.exit(1 if failing else 0)
"""
PROMPT = "{{ attempt }}:{% for e in events %}{{ e.id }} {% endfor %}"


def configure(setup: Setup, follow: bool = True, **settings: Any) -> None:
    setup.agent_py.write_text(AGENT)
    env = {"RECORD": str(setup.records), **settings.pop("env", {})}
    setup.write_config(
        {"a": {"env": env, **settings}}, tail=["--follow"] if follow else [], prompt=PROMPT
    )


def runs(setup: Setup) -> list[dict[str, Any]]:
    return setup.runs()


def ends(setup: Setup) -> dict[int, float]:
    path = Path(f"{setup.records}.end")
    if not path.exists():
        return {}
    return {
        record["pid"]: record["end"] for record in map(json.loads, path.read_text().splitlines())
    }


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def dead_letters(setup: Setup) -> list[dict[str, Any]]:
    listed = ghit_work("dead-letters", "--json", cwd=setup.path)
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


def test_a_child_holding_stdout_neither_holds_the_run_nor_outlives_it(setup: Setup) -> None:
    configure(setup, env={"CHILD": "30", "QUIET": "1"})
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        first = poll(lambda: runs(setup)[:1], what="the first run")[0]
        write_events(setup.events, [event(2)])  # waits for the first run
        exited = poll(lambda: ends(setup).get(first["pid"], 0.0), what="the agent to exit")
        second = poll(lambda: runs(setup)[1:], timeout=10, what="the next batch")[0]
        assert second["ids"] == [2]
        assert second["start"] - exited < 3, "the next batch does not wait for the child"
        left = 8 - (time.time() - exited) + 1
        poll(lambda: not alive(first["child"]), timeout=left, what="the child to be ended")
        assert time.time() - exited < 8.5, "the child is gone within 8 s of the agent's exit"
        assert "agent a: working -> idle, exit 0 after 1." in daemon.text, "its own duration"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_a_batch_failing_twice_succeeds_at_its_third_attempt_with_later_events(
    setup: Setup,
) -> None:
    configure(setup, run_backoff="1s", env={"FAIL_RUNS": "2"})
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        text = daemon.wait_for("agent a: working -> retrying, exit 1 after")
        assert "attempt 2/3 at " in text and "(in 1s)" in text
        write_events(setup.events, [event(2)])
        daemon.wait_for("attempt 3/3 at ")
        daemon.wait_for("agent a: working -> idle, exit 0")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert [(run["attempt"], run["ids"][0]) for run in runs(setup)] == [(1, 1), (2, 1), (3, 1)]
    assert runs(setup)[1]["ids"] == [1, 2], "the event that came meanwhile joined, in order"
    assert "agent a: retrying -> queued, 2 events waiting" in daemon.text
    assert "queued -> working, batch of 2 events [1-2]; attempt 2/3" in daemon.text


def test_an_ignored_sigchld_inherited_from_the_parent_does_not_hide_exit_statuses(
    setup: Setup,
) -> None:
    """A supervisor that starts ghit-work with SIGCHLD ignored would have the kernel reap its
    agents before their status is read: ghit-work sets it back, so a run that failed is told
    from one that did not, and retried."""
    configure(setup, follow=False, run_backoff="0.2s", run_attempts=2, env={"FAIL_RUNS": "1"})
    write_events(setup.events, [event(1)])

    def ignore_sigchld() -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    result = ghit_work("--drain", cwd=setup.path, preexec_fn=ignore_sigchld)
    assert result.returncode == 0, result.stderr
    assert "agent a: working -> retrying, exit 1 after" in result.stderr, result.stderr
    assert "agent a: working -> idle, exit 0 after" in result.stderr, result.stderr
    assert [run["attempt"] for run in runs(setup)] == [1, 2]


def test_a_json_status_line_tells_attempt_and_due_time(setup: Setup) -> None:
    configure(setup, follow=False, run_backoff="0.2s", run_attempts=2, env={"FAIL_RUNS": "1"})
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", "--log-format", "json", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    retrying = next(r for r in records if r.get("to") == "retrying")
    assert (retrying["attempt"], retrying["retry_attempt"], retrying["attempts"]) == (1, 2, 2)
    assert retrying["retry_at"].endswith("Z") and retrying["retry_in"] == 0.2
    assert retrying["outcome"] == "failed"


def test_dead_letters_survive_a_restart_and_are_redelivered_while_stopped(setup: Setup) -> None:
    flag = setup.path / "works"
    configure(
        setup, follow=False, run_attempts=2, run_backoff="0.1s", env={"SUCCEED_IF": str(flag)}
    )
    write_events(setup.events, [event(1), event(2)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert "gave up after 2 attempts: dead letter 1" in result.stderr
    assert "1 dead letter in state_dir" in result.stderr
    [letter] = dead_letters(setup)
    assert (letter["id"], letter["agent"], letter["attempts"]) == (1, "a", 2)
    assert letter["exit_status"] == 1 and letter["error"] == "exit 1"
    assert [e["id"] for e in letter["events"]] == letter["event_ids"] == [1, 2]
    plain = ghit_work("dead-letters", cwd=setup.path)
    assert plain.stdout.startswith("1\ta\t") and "events 1-2 (2)" in plain.stdout

    again = ghit_work("--drain", cwd=setup.path)  # a restart: the dead letter stays
    assert "1 dead letter kept in state_dir (1)" in again.stderr
    assert [d["id"] for d in dead_letters(setup)] == [1]

    unknown = ghit_work("redeliver", "7", cwd=setup.path)
    assert unknown.returncode == 2 and "no dead letter 7" in unknown.stderr
    flag.touch()
    handed = ghit_work("redeliver", "--all", cwd=setup.path)
    assert handed.returncode == 0, handed.stderr
    assert "no ghit-work runs on this state_dir: the next start delivers them" in handed.stdout
    assert dead_letters(setup) == [], "a dead letter leaves the list once handed back"
    before = len(runs(setup))
    final = ghit_work("--drain", cwd=setup.path)
    assert final.returncode == 0, final.stderr
    assert "dead letter 1 handed back to a (2 events)" in final.stderr
    assert "dead letter kept" not in final.stderr, "handed back: no longer announced as kept"
    assert "exited with status 0 (the end of the stream; --drain does not restart it)" in (
        final.stderr
    )
    assert "restarted by ghit-work" not in final.stderr
    assert [run["ids"] for run in runs(setup)[before:]] == [[1, 2]]
    assert dead_letters(setup) == []


def test_a_running_instance_takes_a_redelivery_within_two_seconds(setup: Setup) -> None:
    flag = setup.path / "works"
    configure(setup, run_attempts=1, env={"SUCCEED_IF": str(flag)})
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        daemon.wait_for("dead letter 1 (1 event")
        flag.touch()
        asked = time.monotonic()
        handed = ghit_work("redeliver", "1", "--agent", "a", cwd=setup.path)
        assert handed.returncode == 0 and "delivers them within 2 s" in handed.stdout
        poll(lambda: len(runs(setup)) == 2, timeout=5, what="the redelivered run")
        assert time.monotonic() - asked < 2.5
        daemon.wait_for("agent a: working -> idle, exit 0")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert runs(setup)[1]["ids"] == [1]


def test_dead_letters_handed_back_together_are_one_batch_in_id_order(setup: Setup) -> None:
    """Two dead letters of one agent handed back by one `redeliver` are queued together: one
    batch, in id order, as any events that wait (SPEC §3, §8), not one letter's run after the
    other's."""
    flag = setup.path / "works"
    configure(setup, run_attempts=1, env={"SUCCEED_IF": str(flag)})
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        daemon.wait_for("dead letter 1 (1 event")
        write_events(setup.events, [event(2)])
        daemon.wait_for("dead letter 2 (1 event")
        flag.touch()
        assert ghit_work("redeliver", "2", "1", cwd=setup.path).returncode == 0
        poll(lambda: len(runs(setup)) == 3, timeout=5, what="the redelivered run")
        daemon.wait_for("agent a: working -> idle, exit 0")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert [run["ids"] for run in runs(setup)] == [[1], [2], [1, 2]]


def test_fifty_racing_redeliver_commands_deliver_each_dead_letter_once(setup: Setup) -> None:
    flag = setup.path / "works"
    configure(setup, run_attempts=1, env={"SUCCEED_IF": str(flag)})
    with Running(setup.path) as daemon:
        daemon.wait_for("tail-events: started")
        for ident in range(1, 9):  # one read each: eight batches, eight dead letters
            write_events(setup.events, [event(ident)])
            daemon.wait_for(f"dead letter {ident} (", timeout=20)
        flag.touch()
        commands = [
            subprocess.Popen(
                [GHIT_WORK, "redeliver", "--all"],
                cwd=setup.path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(50)
        ]
        for command in commands:
            assert command.wait(timeout=60) == 0, command.stderr.read() if command.stderr else ""
            if command.stdout:
                command.stdout.close()
            if command.stderr:
                command.stderr.close()
        poll(
            lambda: sorted(i for run in runs(setup)[8:] for i in run["ids"]) == list(range(1, 9)),
            timeout=20,
            what="every dead letter delivered",
        )
        poll(
            lambda: not list((setup.path / ".ghit-work" / "requests").glob("*.json")),
            what="requests consumed",
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    delivered = [i for run in runs(setup)[8:] for i in run["ids"]]
    assert sorted(delivered) == list(range(1, 9)), "each exactly once"
    assert dead_letters(setup) == []


def test_stall_timeout_ends_a_silent_run_but_not_a_slow_talkative_one(setup: Setup) -> None:
    setup.agent_py.write_text(AGENT)
    setup.write_config(
        {
            "silent": {
                "stall_timeout": "1s",
                "run_attempts": 1,
                "env": {"RECORD": str(setup.records), "QUIET": "30"},
            },
            "talker": {
                "stall_timeout": "1s",
                "env": {"RECORD": str(setup.path / "talker.jsonl"), "TALK": "2.5"},
            },
        },
        prompt=PROMPT,
    )
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", cwd=setup.path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "agent silent: working -> idle, stalled (no output for 1s) after 1" in result.stderr
    assert "agent talker: working -> idle, exit 0 after 2." in result.stderr


def test_a_rate_limited_run_is_retried_after_its_seconds_without_using_an_attempt(
    setup: Setup,
) -> None:
    configure(
        setup,
        follow=False,
        run_attempts=1,
        rate_limit_pattern=r"Request rejected \(429\).*retry in (?P<seconds>\d+)s",
        env={"FAIL_RUNS": "1", "SAY": "API Error: Request rejected (429), retry in 1s"},
    )
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert "agent a: working -> rate-limited, exit 1 after" in result.stderr
    assert "rate-limited: attempt 1/1 again at " in result.stderr
    assert [run["attempt"] for run in runs(setup)] == [1, 1]
    first_end = ends(setup)[runs(setup)[0]["pid"]]
    assert runs(setup)[1]["start"] - first_end >= 0.9, "it waited the seconds it was told"
    assert dead_letters(setup) == []


def test_kill_9_during_the_backoff_delivers_the_batch_again_at_the_next_start(
    setup: Setup,
) -> None:
    configure(setup, run_backoff="1h", env={"FAIL_RUNS": "1"})
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        daemon.wait_for("agent a: working -> retrying")
        daemon.signal(signal.SIGKILL)
        daemon.wait()
    configure(setup, follow=False, run_backoff="1h", env={"FAIL_RUNS": "1"})
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert "1 saved event(s) to deliver first, 1 of them redelivered" in result.stderr
    assert [(run["attempt"], run["ids"]) for run in runs(setup)] == [(1, [1]), (1, [1])]


def test_kill_9_while_an_agent_works_leaves_nothing_running_into_the_next_start(
    setup: Setup,
) -> None:
    configure(setup, env={"QUIET": "60"})
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        first = poll(lambda: runs(setup)[:1], what="the first run")[0]
        daemon.signal(signal.SIGKILL)
        daemon.wait()
    assert alive(first["pid"]), "an agent outlives a kill -9 of ghit-work (its own group)"
    poll(lambda: not tail_events(setup), timeout=5, what="tail-events to die with its parent")
    configure(setup, env={"QUIET": "0"})
    with Running(setup.path) as daemon:
        text = daemon.wait_for("agent a: working -> idle, exit 0")
        # recorded (`process group N`), or found by its mark when killed within 50 ms of
        # the spawn, before its record was due (`pid N in process group N, not recorded`)
        assert "ending what a previous ghit-work left running: agent a (" in text
        second = runs(setup)[1]
        assert second["ids"] == [1]
        assert not alive(first["pid"]), "the first run is gone before the batch runs again"
        assert second["start"] > ends_or_now(first["pid"])
        assert len(tail_events(setup)) == 1, "one tail-events, not two"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def ends_or_now(pid: int) -> float:
    return 0.0 if alive(pid) else time.time() - 60


def tail_events(setup: Setup) -> list[int]:
    """The replay stand-ins reading this test's events file."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(setup.events).encode() in argv and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_check_names_a_command_that_cannot_be_found(setup: Setup) -> None:
    setup.write_config({"a": {"cmd": ["no-such-agent-cli", "exec"]}})
    result = ghit_work("check", cwd=setup.path)
    assert result.returncode == 2
    assert result.stderr == (
        "ghit-work: error: ghit-work.toml: agents.a.cmd: command not found: "
        "'no-such-agent-cli' is not on PATH; install it or give its full path\n"
    )
    setup.write_config(
        {
            "a": {
                "resume_cmd": ["./bin/resume", "{session_id}"],
                "session_id_pattern": "id: (\\S+)",
            }
        }
    )
    result = ghit_work("check", cwd=setup.path)
    assert (
        result.returncode == 2
        and "agents.a.resume_cmd: ./bin/resume: no such file" in result.stderr
    )
    setup.write_config({"a": {"cmd": ["mine"], "env": {"PATH": str(setup.path)}}})
    (setup.path / "mine").write_text("#!/bin/sh\n")
    (setup.path / "mine").chmod(0o755)
    assert ghit_work("check", cwd=setup.path).returncode == 0, "the agent's own PATH counts"
    setup.write_config({"a": {"cmd": ["no-such-agent-cli"], "enabled": False}})
    assert ghit_work("check", cwd=setup.path).returncode == 0, "a disabled agent is not checked"


def test_a_missing_command_is_a_warning_at_start_and_its_batch_retries(setup: Setup) -> None:
    setup.write_config({"a": {"cmd": ["no-such-agent-cli"], "run_attempts": 1}})
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert "WARNING config: ghit-work.toml: agents.a.cmd: command not found" in result.stderr
    assert "command not found: no-such-agent-cli" in result.stderr
    assert [d["error"] for d in dead_letters(setup)] == ["command not found: no-such-agent-cli"]
    assert dead_letters(setup)[0]["exit_status"] is None


def test_an_event_line_of_tens_of_megabytes_is_parsed_and_a_longer_one_skipped(
    setup: Setup,
) -> None:
    setup.write_config({"a": {}})
    big = event(1)
    big["summary"]["body"] = "x" * (20 * 2**20)
    huge = event(2)
    huge["summary"]["body"] = "y" * (65 * 2**20)
    write_events(setup.events, [big, huge, event(3)])
    result = ghit_work("--drain", cwd=setup.path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "event 2 is longer than 64 MiB: skipped" in result.stderr
    assert setup.delivered("a") == [1, 3]
