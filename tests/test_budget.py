"""Run budgets in virtual time: at most N starts in any rolling window, nothing dropped."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

from conftest import Running, Setup, event, ghit_work, poll, write_events
from reactivex.testing import TestScheduler
from rxfakes import FakeAgents, agent_config, ev, run_flow

from ghitwork.bus.changes import AgentChanged, AgentState
from ghitwork.observe.dashboard import DashboardModel


def starts(agents: FakeAgents, name: str = "a") -> list[float]:
    return [run.start for run in agents.runs if run.agent == name]


def test_exactly_n_starts_in_any_window_and_the_release_time() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents([agent_config("a", budget="2/100")], scheduler, duration=lambda a, n: 1)
    run_flow([(t, ev(t)) for t in range(10, 400, 10)], agents)
    times = starts(agents)
    assert times[:3] == [10, 20, 110], "third run waits for the window: 10 + 100"
    for start in times:
        assert sum(1 for t in times if start <= t < start + 100) <= 2
    assert sum(len(run.ids) for run in agents.runs) == 39, "nothing dropped"


def test_events_accumulate_while_throttled_and_keep_their_order() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents([agent_config("a", budget="1/100")], scheduler, duration=lambda a, n: 1)
    run_flow([(10, ev(1)), (20, ev(2)), (50, ev(3)), (90, ev(4))], agents)
    assert [(run.start, run.ids) for run in agents.runs] == [(10, (1,)), (110, (2, 3, 4))]
    throttled = [
        c for c in agents.changes if isinstance(c, AgentChanged) and c.new is AgentState.THROTTLED
    ]
    assert len(throttled) == 1, "the operator is told once per throttling"
    assert "budget 1/1m40s used up" in throttled[0].reason
    assert "most events from thread:teams/ghit/ghit/1" in throttled[0].reason
    assert throttled[0].due == 110, "when it runs again, for the views' retry_at"
    model = DashboardModel()
    for change in agents.changes:
        model(change)
        if change is throttled[0]:
            [agent] = model.view().agents
            assert (agent.state, agent.due) == (AgentState.THROTTLED, 110)
            assert [c.due for c in agent.conversations] == [110]


def test_a_throttled_agent_does_not_hold_a_slot() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents(
        [
            agent_config("a", scopes=["repo:teams/ghit/a"], budget="1/1000"),
            agent_config("b", scopes=["repo:teams/ghit/b"]),
        ],
        scheduler,
        duration=lambda a, n: 5,
    )
    arrivals = [
        (10, ev(1, scope="repo:teams/ghit/a")),
        (20, ev(2, scope="repo:teams/ghit/a")),
        (30, ev(3, scope="repo:teams/ghit/b")),
        (40, ev(4, scope="repo:teams/ghit/b")),
    ]
    run_flow(arrivals, agents, limit=1)
    assert starts(agents, "b") == [30, 40], "b runs while a is throttled"
    assert starts(agents, "a") == [10, 1010]


def test_an_agent_busy_when_its_window_opens_starts_when_its_run_ends() -> None:
    scheduler = TestScheduler()
    durations = {0: 5.0, 1: 5.0, 2: 200.0}
    agents = FakeAgents(
        [agent_config("a", budget="2/100")], scheduler, duration=lambda a, n: durations.get(n, 1.0)
    )
    run_flow([(10, ev(1)), (20, ev(2)), (30, ev(3)), (150, ev(4))], agents)
    assert starts(agents) == [10, 20, 110, 310]
    assert agents.runs[-1].ids == (4,)


def test_budgets_apply_per_agent() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents(
        [agent_config("a", budget="1/100"), agent_config("b")], scheduler, duration=lambda a, n: 1
    )
    run_flow([(10, ev(1)), (20, ev(2)), (30, ev(3))], agents)
    assert starts(agents, "a") == [10, 110]
    assert starts(agents, "b") == [10, 20, 30]


LOOPING_AGENT = """\
import fcntl, json, os, sys
sys.stdin.read()
me = os.environ["GHIT_WORK_AGENT"]
with open(os.environ["RECORD"], "a") as f:
    f.write(me + "\\n")
with open(os.environ["EVENTS"], "r+") as events:
    fcntl.flock(events, fcntl.LOCK_EX)
    ident = sum(1 for _ in events) + 1
    events.write(json.dumps({"id": ident, "kind": "reply-created", "actor_user_username": me,
                             "scopes": ["thread:teams/ghit/ghit/7"],
                             "summary": {"web_url": "https://g/7", "api_url": "https://g/a/7"}})
                 + "\\n")
"""


def looping_setup(setup: Setup, budget: str | None) -> None:
    script = setup.path / "reply.py"
    script.write_text(LOOPING_AGENT)
    env = {"RECORD": str(setup.records), "EVENTS": str(setup.events)}
    agents = {}
    for name in ("ping", "pong"):
        settings: dict[str, object] = {
            "cmd": [sys.executable, str(script)],
            "env": env,
            "event_scopes": ["thread:teams/ghit/ghit/7"],
        }
        if budget:
            settings["budget"] = budget
        agents[name] = settings
    setup.write_config(agents, tail=["--follow"])
    write_events(setup.events, [event(1, actor="alice", scopes=["thread:teams/ghit/ghit/7"])])


def runs_of(setup: Setup) -> list[str]:
    return setup.records.read_text().split() if setup.records.exists() else []


def test_two_agents_replying_to_each_other_settle_at_their_budget(setup: Setup) -> None:
    looping_setup(setup, "3/1h")
    with Running(setup.path) as daemon:
        text = daemon.wait_for("-> throttled")
        line = next(line for line in text.splitlines() if "-> throttled" in line)
        throttled = line.split("agent ", 1)[1].split(":", 1)[0]
        assert "budget 3/1h used up, runs again at " in line and "(in 1h)" in line
        assert "most events from thread:teams/ghit/ghit/7" in line, "the report names the loop"

        def shown() -> dict[str, Any]:  # SPEC §9: throttled "with which budget", everywhere
            status = json.loads(ghit_work("status", "--json", cwd=setup.path).stdout or "{}")
            found = {a["name"]: a for a in status.get("agents", [])}.get(throttled, {})
            return found if found.get("state") == "throttled" else {}

        problem = poll(shown, what="throttled in status --json")["problem"]
        assert problem.startswith("budget 3/1h used up, runs again at "), problem
        assert throttled in ghit_work("status", cwd=setup.path).stdout
        assert "budget 3/1h used up" in ghit_work("status", cwd=setup.path).stdout
        # The throttled agent no longer replies, so the other one is not woken again: the
        # loop has settled. SIGTERM, then count: nothing ran past the budget.
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    runs = runs_of(setup)
    assert runs.count(throttled) == 3
    assert all(runs.count(name) <= 3 for name in ("ping", "pong"))


def test_without_a_budget_the_loop_goes_on(setup: Setup) -> None:
    looping_setup(setup, None)
    with Running(setup.path) as daemon:
        poll(lambda: len(runs_of(setup)) >= 20, what="the agents to keep waking each other")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert "throttled" not in daemon.text


def test_a_changed_budget_applies_at_once_and_keeps_the_run_history() -> None:
    scheduler = TestScheduler()
    agents = FakeAgents([agent_config("a", budget="1/100")], scheduler, duration=lambda a, n: 1)
    looser = agent_config("a", budget="2/100")
    scheduler.schedule_absolute(50, lambda *_: agents.agents["a"].reconfigure(looser))
    stricter = agent_config("a", budget="1/1000")
    scheduler.schedule_absolute(60, lambda *_: agents.agents["a"].reconfigure(stricter))
    run_flow([(10, ev(1)), (20, ev(2)), (55, ev(3)), (70, ev(4))], agents)
    # 10: first run; 20: throttled; 50: the looser budget lets event 2 run at once;
    # 60: the stricter one counts the run of 50, so events 3 and 4 wait until 50 + 1000.
    assert [(run.start, run.ids) for run in agents.runs] == [(10, (1,)), (50, (2,)), (1050, (3, 4))]


def test_recent_runs_survive_a_restart(setup: Setup) -> None:
    setup.write_config({"a": {"budget": "1/1h"}})
    write_events(setup.events, [event(1)])
    first = ghit_work("--drain", cwd=setup.path)
    assert first.returncode == 0, first.stderr
    write_events(setup.events, [event(2)])
    with Running(setup.path) as daemon:
        text = daemon.wait_for("agent a: idle -> throttled")
        assert "budget 1/1h used up" in text
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert setup.delivered("a") == [1]
    assert "saved 1 undelivered event(s)" in daemon.text
