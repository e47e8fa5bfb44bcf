"""SPEC §13 through the real command: pause and resume (durable, within 2 s, at the next start
otherwise), and needs-input (no retry, no dead letter; its next event or `resume` wakes it)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

from conftest import Running, Setup, event, ghit_work, poll, write_events

ASKING = """\
import json, os, sys
prompt = sys.stdin.read()
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "asked.jsonl"), "a") as f:
    f.write(json.dumps({"prompt": prompt, "argv": sys.argv[1:]}) + "\\n")
print("session: s-1")
if "ask" in prompt:
    print("NEEDS INPUT: which branch should I push to?")
    sys.exit(1)  # whatever its status: a question is not a failure
"""


def paused_agents(setup: Setup) -> dict[str, Any]:
    result = ghit_work("status", "--json", cwd=setup.path)
    if result.returncode != 0:
        return {}
    return {a["name"]: a for a in json.loads(result.stdout)["agents"] if a["state"] == "paused"}


def test_pause_holds_runs_events_queue_and_resume_delivers_them(setup: Setup) -> None:
    setup.write_config({"a": {}, "b": {}}, tail=["--follow"])
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1)])
        poll(lambda: setup.delivered("a") == [1] and setup.delivered("b") == [1], what="1")
        done = ghit_work("pause", "a", "--reason", "deploying", cwd=setup.path)
        assert done.returncode == 0, done.stderr
        assert "pause requested for a: ghit-work (pid" in done.stdout
        daemon.wait_for("agent a: paused by ghit-work pause: deploying")
        write_events(setup.events, [event(2), event(3)])
        poll(lambda: setup.delivered("b") == [1, 2, 3], what="b goes on")
        daemon.wait_for("agent a: idle -> paused")
        assert setup.delivered("a") == [1]
        assert ghit_work("resume", "a", cwd=setup.path).returncode == 0
        poll(lambda: setup.delivered("a") == [1, 2, 3], what="a's queued events, after resume")
        daemon.wait_for("agent a: resumed by ghit-work resume")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_a_pause_survives_a_restart_and_one_asked_while_stopped_applies_first(
    setup: Setup,
) -> None:
    setup.write_config({"a": {}}, tail=["--follow"])
    write_events(setup.events, [event(1)])
    done = ghit_work("pause", "--all", "--reason", "maintenance", cwd=setup.path)
    assert done.returncode == 0 and "the next start applies it first" in done.stdout
    with Running(setup.path) as daemon:
        daemon.wait_for("agent a: paused by ghit-work pause: maintenance")
        daemon.wait_for("agent a: idle -> paused")  # event 1 waits
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert setup.delivered("a") == []
    with Running(setup.path) as daemon:
        daemon.wait_for("(kept from before the restart)")
        write_events(setup.events, [event(2)])
        daemon.wait_for("agent a: idle -> paused")
        assert setup.delivered("a") == []
        assert ghit_work("resume", "a", cwd=setup.path).returncode == 0
        poll(lambda: setup.delivered("a") == [1, 2], what="every event once resumed")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_a_pause_for_a_while_ends_by_itself(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--follow"])
    with Running(setup.path) as daemon:
        assert ghit_work("pause", "a", "--for", "2s", cwd=setup.path).returncode == 0
        daemon.wait_for("agent a: paused until")
        write_events(setup.events, [event(1)])
        daemon.wait_for("agent a: idle -> paused")
        daemon.wait_for("agent a: resumed by its --for ran out")
        poll(lambda: setup.delivered("a") == [1], what="event 1 after the pause")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_pause_and_resume_name_an_unknown_agent(setup: Setup) -> None:
    setup.write_config({"a": {}})
    for words in (["pause", "nobody"], ["resume", "nobody"]):
        result = ghit_work(*words, cwd=setup.path)
        assert result.returncode == 2
        assert "no agent 'nobody' (agents: a)" in result.stderr
    result = ghit_work("pause", cwd=setup.path)
    assert result.returncode == 2 and "needs agent names, or --all" in result.stderr
    for duration, said in (("0", "must be more than 0"), ("5x", '"5x" is not a duration')):
        result = ghit_work("pause", "a", "--for", duration, cwd=setup.path)
        assert result.returncode == 2 and said in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert not (setup.path / ".ghit-work" / "requests").exists() or not any(
        (setup.path / ".ghit-work" / "requests").iterdir()
    ), "nothing asked of the instance"


def _asking(setup: Setup, tmp: Path) -> Path:
    agent = tmp / "asking.py"
    agent.write_text(ASKING)
    setup.write_config(
        {
            "a": {
                "cmd": [sys.executable, str(agent)],
                "resume_cmd": [sys.executable, str(agent), "--resume", "{session_id}"],
                "session_id_pattern": r"session: (\S+)",
                "needs_input_pattern": r"NEEDS INPUT: (?P<question>.*)",
                "run_attempts": 1,
            }
        },
        tail=["--follow"],
        prompt="{% for e in events %}{{ e.id }}:{{ e.summary.thread_title }} {% endfor %}",
    )
    return tmp / "asked.jsonl"


def runs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_needs_input_parks_the_conversation_and_its_next_event_wakes_it(
    setup: Setup, tmp_path: Path
) -> None:
    asked = _asking(setup, tmp_path)
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1, title="please ask")])
        daemon.wait_for("agent a: working -> needs-input")
        text = daemon.wait_for("which branch should I push to?")
        assert "dead letter" not in text and "retrying" not in text
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    with Running(setup.path) as daemon:  # still waiting for a human after a restart
        daemon.wait_for("agent a: idle -> needs-input")

        def waiting() -> dict[str, Any] | None:
            result = ghit_work("status", "--json", cwd=setup.path)
            if result.returncode != 0:
                return None
            (agent,) = json.loads(result.stdout)["agents"]
            return agent if agent["state"] == "needs-input" else None

        agent = poll(waiting, what="a in needs-input in status --json")
        shown = agent["conversations"][0]
        assert shown["question"] == "which branch should I push to?"
        # every surface still says so: the session it will resume, the question in its row
        # and in attention (a human is wanted, as before the restart)
        assert agent["session_id"] == shown["session_id"] == "s-1"
        text = ghit_work("status", cwd=setup.path).stdout
        row = next(line for line in text.splitlines() if line.startswith("  a "))
        assert "session s-1" in row and "which branch should I push to?" in row, row
        attention = text.split("attention (latest last):")[1]
        assert "a: idle -> needs-input; it needs input: which branch" in attention, text
        write_events(setup.events, [event(2, actor="bob", title="use main")])
        poll(lambda: len(runs(asked)) == 2, what="the answer's run")
        daemon.wait_for("agent a: needs-input -> queued")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    answer = runs(asked)[1]
    assert answer["prompt"].strip() == "2:use main"  # the answer alone, its session resumed
    assert answer["argv"] == ["--resume", "s-1"]
    assert ghit_work("dead-letters", cwd=setup.path).stdout.startswith("no dead letters")


def test_resume_by_hand_wakes_a_conversation_waiting_for_input(
    setup: Setup, tmp_path: Path
) -> None:
    _asking(setup, tmp_path)
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1, title="please ask")])
        daemon.wait_for("agent a: working -> needs-input")
        assert ghit_work("resume", "a", cwd=setup.path).returncode == 0
        daemon.wait_for("agent a: needs-input -> idle")
        # a conversation that waits for nobody: taken, and said so (not silently)
        thread = "thread:teams/ghit/ghit/999"
        assert ghit_work("resume", "a", thread, cwd=setup.path).returncode == 0
        daemon.wait_for(
            f"control: resume: agent a [{thread}] is not waiting for input: nothing to wake"
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    with Running(setup.path) as daemon:  # answered: not waiting any more after a restart
        write_events(setup.events, [event(2)])
        daemon.wait_for("agent a: working -> idle")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert "needs-input" not in daemon.text


def test_a_paused_agent_is_shown_paused_with_its_reason_and_end(setup: Setup) -> None:
    setup.write_config({"a": {}, "b": {}}, tail=["--follow"])
    with Running(setup.path) as daemon:
        daemon.wait_for("tail-events: started")
        assert ghit_work("pause", "a", "--for", "1h", "--reason", "quiet hours", cwd=setup.path)
        daemon.wait_for("agent a: paused until")
        shown = poll(lambda: paused_agents(setup).get("a"), what="a paused in status --json")
        assert "quiet hours" in shown["problem"] and shown["retry_at"] is not None

        def status_text() -> str:
            out = ghit_work("status", cwd=setup.path).stdout
            return out if "paused" in out else ""

        text = poll(status_text, what="status text")
        assert "quiet hours" in text
        assert "b" not in paused_agents(setup)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_an_agent_paused_while_its_run_works_is_paused_at_once_and_the_run_finishes(
    setup: Setup,
) -> None:
    """SPEC §13: "a running one finishes", and "its state is paused on every surface": at
    once, with the reason and the batch that is finishing; nothing new starts after it."""
    setup.write_config(
        {"a": {"env": {"RECORD": str(setup.records), "SLEEP": "3"}}}, tail=["--follow"]
    )
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1)])
        daemon.wait_for("agent a: queued -> working")
        assert ghit_work("pause", "a", "--reason", "deploying", cwd=setup.path).returncode == 0
        shown = poll(lambda: paused_agents(setup).get("a"), what="a paused while working")
        assert "deploying" in shown["problem"] and shown["batch"] == [1], shown
        assert setup.delivered("a") == [1]
        text = ghit_work("status", cwd=setup.path).stdout
        assert "paused" in text and "deploying" in text, text
        write_events(setup.events, [event(2)])
        daemon.wait_for("agent a: idle -> paused, 1 event waiting")  # the run ended; none starts
        poll(
            lambda: paused_agents(setup).get("a", {}).get("batch") == [],
            what="a still paused, its run over",
        )
        assert paused_agents(setup)["a"]["queue"] == 1 and setup.delivered("a") == [1]
        assert ghit_work("resume", "a", cwd=setup.path).returncode == 0
        poll(lambda: setup.delivered("a") == [1, 2], what="2 after resume")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
