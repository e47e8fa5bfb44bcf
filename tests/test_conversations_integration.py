"""SPEC §12 through the real `ghit-work` command: threads as conversations, each with its own
batch, session and workspace, side by side under `concurrency`, across restarts and kill -9."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from conftest import Running, Setup, event, ghit_work, poll, write_events

T1, T2 = "thread:teams/ghit/ghit/1", "thread:teams/ghit/ghit/2"

AGENT = """\
import fcntl, json, os, sys, time
prompt = sys.stdin.read()
here = os.path.dirname(os.path.abspath(__file__))
conversation = os.environ["GHIT_WORK_CONVERSATION"]
# held while this run lives: a second run of the conversation at once cannot take it
lock = open(os.path.join(here, "lock-" + conversation.replace("/", "-")), "w")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    overlap = False
except OSError:
    overlap = True
record = {"conversation": conversation, "prompt": prompt, "overlap": overlap,
          "argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "start": time.time()}
with open(os.path.join(here, "runs.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\\n")
gate = os.environ.get("GATE")
while gate and not os.path.exists(gate):  # held until the test opens the gate
    time.sleep(0.01)
slug = os.environ["GHIT_WORK_CONVERSATION"].replace("/", "-").replace(":", "-") or "own"
print("session: s-" + slug)
with open(os.path.join(here, "ends.jsonl"), "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "end": time.time()}) + "\\n")
"""


def start(setup: Setup, tmp: Path, **settings: Any) -> Path:
    agent = tmp / "agent.py"
    agent.write_text(AGENT)
    values: dict[str, Any] = {
        "cmd": [sys.executable, str(agent)],
        "resume_cmd": [sys.executable, str(agent), "--resume", "{session_id}"],
        "session_id_pattern": r"session: (\S+)",
        "conversations": "thread",
        "concurrency": 2,
    }
    values.update(settings)
    setup.write_config(
        {"a": values},
        tail=["--follow"],
        prompt="conversation={{ conversation }} ids={% for e in events %}{{ e.id }} {% endfor %}",
    )
    return tmp / "runs.jsonl"


def runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def ids(run: dict[str, Any]) -> list[int]:
    return [int(word) for word in run["prompt"].split("ids=")[1].split()]


def test_threads_run_side_by_side_each_with_its_own_batch_and_session(
    setup: Setup, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    record = start(setup, tmp_path, env={"GATE": str(gate)})
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1, scopes=[T1]), event(2, scopes=[T2])])
        # both threads' first runs are working at once (concurrency = 2): neither can end
        # before the gate opens
        first = poll(lambda: runs(record) if len(runs(record)) == 2 else None, what="2 runs")
        assert {r["conversation"]: ids(r) for r in first} == {T1: [1], T2: [2]}
        write_events(setup.events, [event(3, scopes=[T1])])  # its own batch, after run 1
        gate.touch()
        poll(lambda: len(runs(record)) == 3, what="thread 1's second batch")
        write_events(setup.events, [event(4, scopes=[T2])])
        poll(lambda: len(runs(record)) == 4, what="thread 2's second batch")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    every = runs(record)
    assert [(r["conversation"], ids(r)) for r in every[2:]] == [(T1, [3]), (T2, [4])]
    # each conversation's next batch resumes its own session
    assert every[2]["argv"] == ["--resume", "s-thread-teams-ghit-ghit-1"]
    assert every[3]["argv"] == ["--resume", "s-thread-teams-ghit-ghit-2"]
    assert "conversation=thread:teams/ghit/ghit/1 ids=3" in every[2]["prompt"]
    text = daemon.text
    assert f"agent a [{T1}]: queued -> working, batch of 1 event [1]" in text


def test_sessions_per_conversation_survive_a_restart(setup: Setup, tmp_path: Path) -> None:
    record = start(setup, tmp_path)
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1, scopes=[T1]), event(2, scopes=[T2])])
        poll(lambda: len(runs(record)) == 2, what="two runs")
        daemon.wait_for(f"agent a [{T2}]: working -> idle")
        daemon.wait_for(f"agent a [{T1}]: working -> idle")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(3, scopes=[T2]), event(4, scopes=[T1])])
        poll(lambda: len(runs(record)) == 4, what="two more runs")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    resumed = {r["conversation"]: r["argv"] for r in runs(record)[2:]}
    assert resumed == {
        T1: ["--resume", "s-thread-teams-ghit-ghit-1"],
        T2: ["--resume", "s-thread-teams-ghit-ghit-2"],
    }


def test_agent_mode_is_one_conversation_named_empty(setup: Setup, tmp_path: Path) -> None:
    record = start(setup, tmp_path, conversations="agent")
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1, scopes=[T1]), event(2, scopes=[T2])])
        poll(lambda: sum(len(ids(r)) for r in runs(record)) == 2, what="both events")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert {r["conversation"] for r in runs(record)} == {""}
    assert "agent a: queued -> working" in daemon.text and "[thread:" not in daemon.text


def test_workspaces_are_made_once_per_thread_and_removed_when_idle(
    setup: Setup, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    record = start(
        setup,
        tmp_path,
        workdir=str(work / "{conversation_slug}"),
        workspace_setup=[
            "sh",
            "-c",
            'echo "$GHIT_WORK_CONVERSATION {conversation_slug}" >> .setup',
        ],
        workspace_teardown=["sh", "-c", 'echo "$PWD" >> ../torn-down'],
        workspace_keep="1s",
    )
    one, two = work / "teams-ghit-ghit-1", work / "teams-ghit-ghit-2"
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1, scopes=[T1]), event(2, scopes=[T2])])
        poll(lambda: len(runs(record)) == 2, what="two runs")
        assert {r["conversation"]: r["cwd"] for r in runs(record)} == {T1: str(one), T2: str(two)}
        assert (one / ".setup").read_text() == f"{T1} teams-ghit-ghit-1\n"
        write_events(setup.events, [event(3, scopes=[T1])])
        poll(lambda: len(runs(record)) == 3, what="thread 1 again")
        # idle for workspace_keep: torn down (in it), then removed
        poll(lambda: not one.exists() and not two.exists(), what="both workspaces removed")
        torn = (work / "torn-down").read_text().split()
        assert sorted(torn) == [str(one), str(two)]
        assert (tmp_path / "runs.jsonl").exists()
        # a new event in thread 1 makes its workspace again, setup included
        write_events(setup.events, [event(4, scopes=[T1])])
        poll(lambda: len(runs(record)) == 4, what="thread 1 once more")
        assert (one / ".setup").read_text() == f"{T1} teams-ghit-ghit-1\n"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert "workspace" in daemon.text


def test_a_failed_workspace_setup_fails_that_run_only(setup: Setup, tmp_path: Path) -> None:
    work = tmp_path / "work"
    record = start(
        setup,
        tmp_path,
        workdir=str(work / "{conversation_slug}"),
        workspace_setup=[
            "sh",
            "-c",
            'test "$GHIT_WORK_CONVERSATION" != "{conversation}" || '
            'case "{conversation_slug}" in *-1) echo "no checkout" >&2; exit 3;; esac',
        ],
        run_attempts=1,
    )
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1, scopes=[T1]), event(2, scopes=[T2])])
        poll(lambda: len(runs(record)) == 1, what="thread 2's run")
        daemon.wait_for("dead letter")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert [r["conversation"] for r in runs(record)] == [T2]
    assert "workspace_setup failed (exit 3): no checkout" in daemon.text
    # the workdir its setup was making is taken down again: the retry starts from scratch
    assert not (work / "teams-ghit-ghit-1").exists() and (work / "teams-ghit-ghit-2").is_dir()
    letters = ghit_work("dead-letters", "--json", cwd=setup.path)
    letter = json.loads(letters.stdout.splitlines()[0])
    assert (letter["event_ids"], letter["conversation"]) == ([1], T1)


def test_a_shared_workdir_is_made_and_set_up_once_for_all_threads(
    setup: Setup, tmp_path: Path
) -> None:
    """Without `{conversation_slug}` every conversation shares the workdir: missing, it is
    made, and `workspace_setup` runs once, before the agent's first run, however many
    threads start at once (two here); not again after a restart."""
    shared = tmp_path / "shared"
    record = start(
        setup,
        tmp_path,
        workdir=str(shared),
        workspace_setup=["sh", "-c", "sleep 0.3; echo once >> ../setups"],
    )
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1, scopes=[T1]), event(2, scopes=[T2])])
        poll(lambda: len(runs(record)) == 2, what="both threads' runs")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert {r["cwd"] for r in runs(record)} == {str(shared)}
    assert (tmp_path / "setups").read_text() == "once\n"
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(3, scopes=[T1])])
        poll(lambda: len(runs(record)) == 3, what="thread 1 after the restart")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert (tmp_path / "setups").read_text() == "once\n"


def test_single_flight_per_conversation_holds_across_kill_9(setup: Setup, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = start(setup, tmp_path, env={"GATE": str(gate)}, concurrency=3)
    t3 = "thread:teams/ghit/ghit/3"
    with Running(setup.path) as daemon:
        write_events(
            setup.events, [event(1, scopes=[T1]), event(2, scopes=[T2]), event(3, scopes=[t3])]
        )
        poll(lambda: len(runs(record)) == 3, what="three threads working")
        write_events(setup.events, [event(4, scopes=[T1])])  # queued behind thread 1's run
        daemon.wait_for("1 event waiting")
        daemon.process.kill()
        daemon.process.wait()
    with Running(setup.path) as daemon:
        poll(lambda: len(runs(record)) >= 6, what="the three threads redelivered")
        gate.touch()
        poll(
            lambda: sorted(i for r in runs(record)[3:] for i in ids(r)) == [1, 2, 3, 4],
            what="every event delivered again or for the first time",
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    again = runs(record)[3:]
    assert {r["conversation"] for r in again} == {T1, T2, t3}
    # the crashed instance's runs were ended before their threads ran again: no run found
    # its conversation's lock held by another
    assert [r for r in runs(record) if r["overlap"]] == []
    assert "redelivered" in daemon.text


def test_an_upgrade_keeps_the_per_agent_queue_and_session(setup: Setup, tmp_path: Path) -> None:
    """State written by a version without conversations (one queue and one session per
    agent), read by an agent now in thread mode: the queue splits by thread, the session is
    the agent's own conversation's."""
    record = start(setup, tmp_path)
    state = setup.path / ".ghit-work"
    state.mkdir(mode=0o700)
    old = {
        "version": 1,
        "generation": 0,
        "cursor": 3,
        "agents": {
            "a": {
                "pending": [event(1, scopes=[T1]), event(2, scopes=[T2]), event(3, scopes=[T1])],
                "inflight": [1],
                "session_id": "s-old",
                "runs": [],
            }
        },
        "dead_letters": [],
        "next_dead_letter": 1,
    }
    (state / "state.json").write_text(json.dumps(old))
    with Running(setup.path) as daemon:
        poll(lambda: len(runs(record)) == 2, what="the saved events, per thread")
        write_events(setup.events, [event(4, scopes=["team:ghit"])])  # no thread: its own
        poll(lambda: len(runs(record)) == 3, what="the agent's own conversation")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    every = runs(record)
    assert sorted((r["conversation"], tuple(ids(r))) for r in every[:2]) == [
        (T1, (1, 3)),
        (T2, (2,)),
    ]
    assert every[2]["conversation"] == "" and every[2]["argv"] == ["--resume", "s-old"]
    assert (
        "2 saved event(s)" not in daemon.text and "3 saved event(s) to deliver first" in daemon.text
    )


def test_the_environment_names_the_conversation_in_agent_mode_too(setup: Setup) -> None:
    script = setup.path / "env.sh"
    script.write_text('#!/bin/sh\nprintf "[%s]" "${GHIT_WORK_CONVERSATION-unset}" > "$OUT"\n')
    script.chmod(0o755)
    out = setup.path / "out"
    setup.write_config({"a": {"cmd": [str(script)], "env": {"OUT": str(out)}}})
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(lambda: out.exists() and out.read_text() == "[]", what="the agent's environment")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert "GHIT_WORK_CONVERSATION" not in os.environ  # set by ghit-work, not inherited


def test_check_names_a_workspace_command_that_cannot_be_found(setup: Setup) -> None:
    setup.write_config({"a": {"conversations": "thread", "workspace_setup": ["no-such-git"]}})
    result = ghit_work("check", cwd=setup.path)
    assert result.returncode == 2
    assert "agents.a.workspace_setup: command not found: 'no-such-git'" in result.stderr


def test_workspace_keep_needs_a_workdir_per_conversation(setup: Setup) -> None:
    setup.write_config({"a": {"conversations": "thread", "workspace_keep": "1h"}})
    result = ghit_work("check", cwd=setup.path)
    assert result.returncode == 2
    assert "agents.a.workspace_keep: removes idle workspaces" in result.stderr
    setup.write_config({"a": {"conversations": "threads"}})
    result = ghit_work("check", cwd=setup.path)
    assert 'agents.a.conversations: expected "agent"' in result.stderr


def test_a_reload_to_agent_mode_holds_its_run_while_thread_runs_finish(
    setup: Setup, tmp_path: Path
) -> None:
    """SPEC §3: each agent runs at most one invocation at a time in agent mode, also when a
    reload switched it from threads while their runs were still working."""
    gate = tmp_path / "gate"
    record = start(setup, tmp_path, env={"GATE": str(gate)})
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1, scopes=[T1]), event(2, scopes=[T2])])
        poll(lambda: len(runs(record)) == 2, what="both threads working")
        start(setup, tmp_path, env={"GATE": str(gate)}, conversations="agent")
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("config reloaded")
        write_events(setup.events, [event(3, scopes=[T1])])
        daemon.wait_for("agent a: idle -> queued, 1 event waiting")
        assert len(runs(record)) == 2, "no run of the agent while its thread runs work"
        gate.touch()
        poll(lambda: len(runs(record)) == 3, what="event 3 once the thread runs ended")
        third = runs(record)[2]
        assert (third["conversation"], ids(third)) == ("", [3])
        lines = (tmp_path / "ends.jsonl").read_text().splitlines()
        ends = {json.loads(line)["pid"]: json.loads(line)["end"] for line in lines}
        first = [ends[run["pid"]] for run in runs(record)[:2]]
        assert third["start"] >= max(first), "it started after both thread runs ended"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_a_reload_to_thread_mode_sends_what_was_queued_to_its_threads(
    setup: Setup, tmp_path: Path
) -> None:
    """SPEC §12: batches never mix conversations, and a thread's events run in id order;
    events queued in the agent's own conversation before a reload to thread mode go to their
    threads (as a restart would split them), not into one mixed batch after later ones."""
    gate = tmp_path / "gate"
    record = start(setup, tmp_path, env={"GATE": str(gate)}, conversations="agent")
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1, scopes=[T1])])
        poll(lambda: len(runs(record)) == 1, what="event 1 working")
        write_events(setup.events, [event(2, scopes=[T1]), event(3, scopes=[T2])])

        def queued() -> int:
            status = json.loads(ghit_work("status", "--json", cwd=setup.path).stdout or "{}")
            return sum(a["queue"] for a in status.get("agents", []))

        poll(lambda: queued() == 2, what="events 2 and 3 queued behind event 1")
        start(setup, tmp_path, env={"GATE": str(gate)}, concurrency=3)
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("its other queued events went to their threads")
        write_events(setup.events, [event(4, scopes=[T1])])
        gate.touch()
        poll(lambda: sum(len(ids(run)) for run in runs(record)) == 4, what="all 4 delivered")
        by_thread: dict[str, list[int]] = {}
        for run in runs(record):
            batch = ids(run)
            assert {T1 if i in (1, 2, 4) else T2 for i in batch} == {
                T1 if batch[0] in (1, 2, 4) else T2
            }, f"a batch mixes threads: {batch}"
            thread = T1 if batch[0] in (1, 2, 4) else T2
            by_thread.setdefault(thread, []).extend(batch)
        assert by_thread == {T1: [1, 2, 4], T2: [3]}, by_thread
        assert [r["conversation"] for r in runs(record) if ids(r) == [3]] == [T2]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
