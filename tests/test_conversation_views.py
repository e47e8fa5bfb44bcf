"""SPEC §12's views of conversations: what the status lines, the model, the snapshot
(`status`, `status --json`, `/api/v1/state`), `/metrics`, the TUI and `dead-letters` show for
an agent with one conversation per thread, and that with `conversations = "agent"` each shows
what it showed before conversations existed.

In-process: Change values are published into each surface, as the flow publishes them.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import Running, Setup, event, ghit_work, poll, write_events
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rxfakes import agent_config, events_routed
from test_ui_render import canvas, draw, model, text

from ghitwork.app import commands
from ghitwork.bus.changes import (
    AgentChanged,
    AgentPaused,
    AgentState,
    Change,
    ConfigApplied,
    ConversationsQueued,
    DeadLettersRedelivered,
    EventsRestored,
    Level,
    RunFinished,
    RunStarted,
    UsageLoaded,
    WorkspaceChanged,
)
from ghitwork.config.model import AgentConfig, Config
from ghitwork.http.metrics import Counts, registry
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.decisions import Retry
from ghitwork.model.events import Event
from ghitwork.model.formatting import iso
from ghitwork.model.redact import Redactor
from ghitwork.model.results import RunResult
from ghitwork.model.usage import Charge, Usage, day_of
from ghitwork.observe import snapshot, statusfile
from ghitwork.observe.agents import IDLE_KEPT, _Agent
from ghitwork.observe.dashboard import MAX_IDLE, DashboardModel
from ghitwork.observe.lines import describe
from ghitwork.observe.status import StatusWriter
from ghitwork.observe.view import _hms
from ghitwork.persist.saved import dumps
from ghitwork.tui.panes import UiState, render

NOW = 1_800_000_000.0
T39 = "thread:teams/ghit/ghit/39"
T41 = "thread:teams/ghit/ghit/41"
SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "snapshot.schema.json").read_text())


def threads(name: str, **changes: Any) -> AgentConfig:
    return replace(agent_config(name), conversations="thread", **changes)


def config(*agents: AgentConfig) -> Config:
    return Config(path=Path("ghit-work.toml"), limit=0, retry=300.0, agents=agents)


def ev(ident: int, thread: str | None = T39) -> Event:
    scopes = (thread, "repo:teams/ghit/ghit") if thread else ("repo:teams/ghit/ghit",)
    title = {T39: "Add rate limiting", T41: "Weekly report"}.get(thread or "", "")
    data = {"id": ident, "kind": "reply-created", "summary": {"thread_title": title}}
    return Event(ident, "reply-created", "alice", scopes, data)


def charge(agent: str, conversation: str, cost: float, tokens: int = 100) -> Charge:
    return Charge(
        agent=agent,
        time=NOW,
        day=day_of(NOW),
        usage=Usage(input_tokens=tokens, output_tokens=tokens // 10, cost_usd=cost),
        conversation=conversation,
    )


def result(agent: str, ids: tuple[int, ...], code: int = 0, **more: Any) -> RunResult:
    return RunResult(
        agent=agent,
        event_ids=ids,
        command=("true",),
        started=NOW - 5,
        ended=NOW - 3,
        returncode=code,
        **more,
    )


def changed(agent: str, old: str, new: str, queue: int, conversation: str = "") -> AgentChanged:
    return AgentChanged(
        agent=agent,
        old=AgentState(old),
        new=AgentState(new),
        queue=queue,
        conversation=conversation,
        at=NOW - 10,
    )


def started(
    agent: str, ids: tuple[int, ...], conversation: str = "", session: str | None = None
) -> RunStarted:
    return RunStarted(
        agent=agent,
        old=AgentState.QUEUED,
        event_ids=ids,
        pid=None,
        resumed=session is not None,
        redelivered=False,
        session_id=session,
        queue=0,
        conversation=conversation,
        shown=tuple(ev(i, conversation or None) for i in ids),
        at=NOW - 8,
    )


def two_threads() -> list[Change]:
    """Agent `a` (thread mode): thread 39 works on [1, 3] with 4 queued behind it, thread 41
    ran [2], failed, and waits to retry; agent `b` (agent mode) is idle."""
    return [
        ConfigApplied(config=config(threads("a"), agent_config("b")), at=NOW - 60),
        UsageLoaded(
            totals={"a": Usage(input_tokens=1000, cost_usd=1.0)},
            days={"a": {day_of(NOW): Usage(input_tokens=1000, cost_usd=1.0)}},
            conversations={"a": {T41: Usage(input_tokens=1000, cost_usd=1.0)}},
            at=NOW - 60,
        ),
        events_routed(((ev(1), ("a",)), (ev(2, T41), ("a",)), (ev(3), ("a",))), {"a"}, NOW),
        changed("a", "idle", "queued", 2, T39),
        changed("a", "idle", "queued", 1, T41),
        started("a", (1, 3), T39, session="S39"),
        started("a", (2,), T41),
        RunFinished(
            agent="a",
            result=result(
                "a", (2,), 1, charge=charge("a", T41, 0.25), session_id="S41", conversation=T41
            ),
            new=AgentState.RETRYING,
            queue=0,
            attempts=3,
            retry=Retry(delay=30.0, attempt=2, rate_limited=False),
            retry_at=NOW + 30,
            conversation=T41,
            at=NOW - 3,
        ),
        events_routed(((ev(4), ("a",)),), {"a"}, NOW),
    ]


def fed(changes: list[Change], m: DashboardModel | None = None) -> DashboardModel:
    m = m or DashboardModel(clock=lambda: NOW)
    for change in changes:
        m(change)
    return m


# -- status lines


def test_every_line_about_a_conversation_names_it_and_the_agents_own_reads_as_before() -> None:
    lines = [describe(change) for change in two_threads()[3:]]
    texts = [line.message for line in lines if line is not None]
    assert texts[:3] == [
        f"agent a [{T39}]: idle -> queued, 2 events waiting",
        f"agent a [{T41}]: idle -> queued, 1 event waiting",
        f"agent a [{T39}]: queued -> working, batch of 2 events [1,3]; resuming session S39",
    ]
    assert texts[4].startswith(f"agent a [{T41}]: working -> retrying, exit 1 after 2s [2]")
    # The agent's own conversation, and every line in agent mode: today's words exactly.
    own = describe(changed("b", "idle", "queued", 1))
    assert own is not None and own.message == "agent b: idle -> queued, 1 event waiting"
    ran = describe(started("b", (7,)))
    assert ran is not None and ran.message == "agent b: queued -> working, batch of 1 event [7]"
    done = describe(
        RunFinished(agent="b", result=result("b", (7,)), new=AgentState.IDLE, queue=0, at=NOW)
    )
    assert done is not None and done.message == "agent b: working -> idle, exit 0 after 2s [7]"


def test_json_lines_carry_the_conversation_the_agents_own_as_empty() -> None:
    out = io.StringIO()
    writer = StatusWriter(out, json_format=True)
    for change in [*two_threads()[3:], changed("b", "idle", "queued", 1)]:
        writer(change)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    states = [r for r in records if r["event"] == "agent.state"]
    assert [r["conversation"] for r in states] == [T39, T41, T39, T41, T41, ""]
    assert states[-1]["agent"] == "b" and states[-1]["message"].startswith("agent b: idle")


def test_conversations_queued_by_one_read_have_a_line_each_and_the_same_model() -> None:
    """A ConversationsQueued is, to the status lines and the model, each conversation's
    AgentChanged to queued; at warning level it prints nothing."""
    batch = ConversationsQueued(
        agent="a",
        queued=((T39, AgentState.IDLE, 2), (T41, AgentState.NEEDS_INPUT, 1)),
        at=NOW,
    )
    one_by_one = list(batch.each())
    assert [(c.conversation, str(c.old), str(c.new), c.queue) for c in one_by_one] == [
        (T39, "idle", "queued", 2),
        (T41, "needs-input", "queued", 1),
    ]
    texts: list[str] = []
    for changes in ([batch], one_by_one):
        out = io.StringIO()
        writer = StatusWriter(out)
        for change in changes:
            writer(change)
        texts.append(out.getvalue())
    assert texts[0] == texts[1]
    assert texts[0].splitlines()[0].endswith(f"agent a [{T39}]: idle -> queued, 2 events waiting")
    quiet = io.StringIO()
    StatusWriter(quiet, level=Level.WARNING)(batch)
    assert quiet.getvalue() == ""
    views, applied = [], ConfigApplied(config=config(threads("a")), at=NOW - 60)
    for changes in ([batch], one_by_one):
        model = DashboardModel(clock=lambda: NOW)
        model(applied)
        for change in changes:
            model(change)
        views.append(tuple(replace(a, config=None) for a in model.view().agents))
        assert list(model.log)[-2:] == [
            f"{_hms(NOW)} agent a [{T39}]: idle -> queued, 2 events waiting",
            f"{_hms(NOW)} agent a [{T41}]: needs-input -> queued, 1 event waiting",
        ]
    assert views[0] == views[1]
    [agent] = views[0]
    assert [(c.conversation, str(c.state), c.queue) for c in agent.conversations] == [
        (T41, "queued", 1),
        (T39, "queued", 2),
    ]


def test_a_workspace_has_lines_when_made_and_removed_and_its_use_only_at_debug() -> None:
    made = WorkspaceChanged(agent="a", conversation=T39, path="/w/39", ready=True, at=NOW)
    used = replace(made, used=NOW)
    removed = WorkspaceChanged(
        agent="a", conversation=T39, path="/w/39", ready=False, used=NOW - 7200, at=NOW
    )
    info, debug = io.StringIO(), io.StringIO()
    for out, level in ((info, Level.INFO), (debug, Level.DEBUG)):
        writer = StatusWriter(out, level=level)
        for change in (made, used, removed):
            writer(change)
    assert [line.split(maxsplit=2)[2] for line in info.getvalue().splitlines()] == [
        f"agent a [{T39}]: workspace ready: /w/39",
        f"agent a [{T39}]: workspace removed after 2h idle: /w/39",
    ]
    assert f"DEBUG   agent a [{T39}]: workspace used: /w/39" in debug.getvalue()
    line = describe(removed)
    assert line is not None and line.fields["conversation"] == T39
    assert line.fields["ready"] is False


# -- the model


def test_the_agents_row_sums_up_its_conversations() -> None:
    agent = fed(two_threads()).view().agents[0]
    assert agent.name == "a"
    assert (agent.state, agent.queue, agent.batch_ids) == (AgentState.WORKING, 1, (1, 3))
    assert [b[0] for b in agent.batch] == [1, 3] and agent.session_id == "S39"
    assert agent.usage_total.cost_usd == pytest.approx(1.25)
    by_name = {c.conversation: c for c in agent.conversations}
    assert list(by_name) == [T39, T41], "working first, then retrying"
    t39, t41 = by_name[T39], by_name[T41]
    assert (t39.state, t39.queue, t39.batch_ids, t39.session_id) == (
        AgentState.WORKING,
        1,
        (1, 3),
        "S39",
    )
    assert t39.last_run is None and t39.usage == Usage()
    assert (t41.state, t41.queue, t41.attempt, t41.due) == (AgentState.RETRYING, 0, 2, NOW + 30)
    assert t41.problem == "exit 1" and t41.session_id == "S41"
    assert t41.last_run is not None and t41.last_run.returncode == 1
    assert t41.usage.cost_usd == pytest.approx(1.25), "loaded from state_dir, then charged"


def test_the_most_pressing_state_wins_and_a_disabled_agent_is_disabled_unless_working() -> None:
    m = fed(two_threads())
    m(
        RunFinished(
            agent="a",
            result=result("a", (1, 3)),
            new=AgentState.QUEUED,
            queue=1,
            conversation=T39,
            at=NOW,
        )
    )
    assert m.view().agents[0].state is AgentState.QUEUED
    m(changed("a", "queued", "idle", 0, T39))
    agent = m.view().agents[0]
    assert (agent.state, agent.due, agent.attempt) == (AgentState.RETRYING, NOW + 30, 2)
    assert agent.queue == 0 and agent.batch_ids == ()
    m(changed("a", "retrying", "idle", 0, T41))
    assert m.view().agents[0].state is AgentState.IDLE
    m(ConfigApplied(config=config(threads("a", enabled=False), agent_config("b")), at=NOW))
    agent = m.view().agents[0]
    assert agent.state is AgentState.DISABLED
    assert {c.state for c in agent.conversations} == {AgentState.DISABLED}
    m(ConfigApplied(config=config(threads("a"), agent_config("b")), at=NOW))
    assert m.view().agents[0].state is AgentState.IDLE, "the flow forgot its idle threads"


def test_the_states_of_spec_13_rank_too() -> None:
    """needs-input asks a human: it shows over a retry; paused over idle only."""
    m = fed(two_threads())
    m(changed("a", "working", "paused", 0, T39))
    assert m.view().agents[0].state is AgentState.RETRYING
    m(changed("a", "retrying", "needs-input", 0, T41))
    assert m.view().agents[0].state is AgentState.NEEDS_INPUT
    m(changed("a", "needs-input", "idle", 0, T41))
    assert m.view().agents[0].state is AgentState.PAUSED
    data = snapshot.build(m.view(), None, NOW)
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    assert 'state="paused"} 1.0' in "\n".join(metric_lines(m))


def test_a_paused_agent_is_paused_at_once_with_its_finishing_batch_unless_disabled() -> None:
    """SPEC §13: paused on every surface at once; its run finishing keeps its batch (and its
    conversation says working); a disabled agent says working, then disabled, as before."""
    m = fed(two_threads())  # a's thread 39 works on [1, 3]
    m(AgentPaused(agent="a", paused=True, by="ghit-work pause", reason="deploying", at=NOW))
    agent = m.view().agents[0]
    assert (agent.state, agent.batch_ids, agent.working) == (AgentState.PAUSED, (1, 3), True)
    assert "deploying" in agent.problem
    assert {c.state for c in agent.conversations} >= {AgentState.WORKING}
    assert "a paused (run finishing)" in text(draw(m, width=120, height=30))
    m(ConfigApplied(config=config(threads("a", enabled=False), agent_config("b")), at=NOW))
    assert m.view().agents[0].state is AgentState.WORKING, "disabled, its run finishing"


def test_in_agent_mode_the_one_conversation_is_the_agent() -> None:
    """The fixture of test_ui_render (agent mode): every agent has its own conversation only,
    and it says what the agent's row says."""
    for agent in model().view().agents:
        (own,) = agent.conversations
        assert own.conversation == "" and not agent.threads
        assert (own.state, own.since, own.queue, own.batch_ids, own.session_id) == (
            agent.state,
            agent.since,
            agent.queue,
            agent.batch_ids,
            agent.session_id,
        )
        assert (own.attempt, own.due, own.problem) == (agent.attempt, agent.due, agent.problem)
        assert own.last_run == (agent.runs[-1] if agent.runs else None)


def test_events_and_letters_queue_in_their_conversation_and_saved_ones_in_the_agent() -> None:
    m = fed(two_threads()[:1])
    m(events_routed(((ev(1), ("a", "b")), (ev(2, None), ("a", "b"))), {"a"}, NOW))
    a, b = m.view().agents
    assert {c.conversation: c.queue for c in a.conversations} == {T39: 1, "": 1}
    assert {c.conversation: c.queue for c in b.conversations} == {"": 2}
    letter = DeadLetter(3, "a", ({"id": 5},), 3, 1, "exit 1", NOW, conversation=T41)
    m(DeadLettersRedelivered(letters=(letter,), at=NOW))
    m(EventsRestored(counts={"a": 4, "b": 1}, at=NOW))
    a, b = m.view().agents
    assert (a.queue, b.queue) == (7, 3)
    assert {c.conversation: c.queue for c in a.conversations} == {T39: 1, "": 1, T41: 1}
    # Once a conversation tells its queue, the saved events are counted where they are.
    m(changed("a", "idle", "queued", 3, T39))
    assert m.view().agents[0].queue == 5


def test_idle_conversations_are_forgotten_beyond_the_most_recent_fifty() -> None:
    m = fed(two_threads()[:1])
    for n in range(1000):
        thread = f"thread:teams/ghit/ghit/{n}"
        m(changed("a", "idle", "queued", 1, thread))
        m(started("a", (n,), thread))
        m(
            RunFinished(
                agent="a",
                result=result("a", (n,), charge=charge("a", thread, 0.01)),
                new=AgentState.IDLE,
                queue=0,
                conversation=thread,
                at=NOW,
            )
        )
    m(changed("a", "idle", "queued", 2, T39))
    agent = m.view().agents[0]
    kept = [c.conversation for c in agent.conversations]
    assert len(kept) == MAX_IDLE + 1 and kept[0] == T39
    assert kept[1:] == [f"thread:teams/ghit/ghit/{n}" for n in range(999, 949, -1)]
    assert agent.usage_total.cost_usd == pytest.approx(10.0)
    assert len(m.agents["a"].conversations) == MAX_IDLE + 1


def idle_again(thread: str, session: str | None, at: float) -> RunFinished:
    """Agent `a`'s run in `thread` ended at `at`, nothing queued behind it."""
    return RunFinished(
        agent="a",
        result=result("a", (1,), session_id=session, conversation=thread),
        new=AgentState.IDLE,
        queue=0,
        conversation=thread,
        at=at,
    )


def ran(m: DashboardModel, thread: str, session: str | None, at: float) -> None:
    """Agent `a` ran an event in `thread` (with `session`), idle since `at`."""
    m(changed("a", "idle", "queued", 1, thread))
    m(started("a", (1,), thread, session=session))
    m(idle_again(thread, session, at))


def test_an_idle_conversation_without_a_session_is_left_out_after_a_while() -> None:
    """SPEC §12: idle conversations with nothing queued may be left out after a while; one
    that has no session then costs nothing. One with a session, one queued, one working, and
    the agent's own stay."""
    now = [NOW]
    m = DashboardModel(clock=lambda: now[0])
    fed(two_threads()[:1], m)
    for thread, session in (("thread:x/1", None), ("thread:x/2", "s-2"), ("thread:x/3", None)):
        ran(m, thread, session, NOW)
    m(idle_again("thread:x/3", None, NOW + 30))  # idle for less long
    m(changed("a", "idle", "queued", 2, "thread:x/4"))
    m(started("a", (5,), T39))

    def listed() -> set[str]:
        return {c.conversation for c in m.view().agents[0].conversations}

    before = listed()
    assert {"thread:x/1", "thread:x/2", "thread:x/3", "thread:x/4", T39} <= before
    now[0] = NOW + IDLE_KEPT - 1
    version = m.version
    m.sweep()
    assert listed() == before and m.version == version
    now[0] = NOW + IDLE_KEPT
    m.sweep()
    assert listed() == before - {"thread:x/1"} and m.version == version + 1
    now[0] = NOW + 30 + IDLE_KEPT
    m.sweep()
    assert listed() == before - {"thread:x/1", "thread:x/3"}
    agent = m.view().agents[0]
    assert agent.state is AgentState.WORKING and agent.queue == 2
    m(changed("a", "idle", "queued", 1, "thread:x/1"))  # it comes back when it has news
    assert "thread:x/1" in listed()


def test_an_agent_left_with_one_conversation_by_the_sweep_is_that_one() -> None:
    """With one conversation left the agent's row is that conversation's, its `since` too."""
    now = [NOW]
    m = DashboardModel(clock=lambda: now[0])
    fed(two_threads()[:1], m)
    for thread, session, at in (("thread:x/1", "s-1", NOW + 50), ("thread:x/2", None, NOW + 100)):
        ran(m, thread, session, at)
    now[0] = NOW + 100 + IDLE_KEPT
    m.sweep()
    agent = m.view().agents[0]
    assert [c.conversation for c in agent.conversations] == ["thread:x/1"]
    assert agent.since == agent.conversations[0].since == NOW + 50


def test_threads_kept_in_state_dir_are_listed_at_start_with_their_usage() -> None:
    kept = {f"thread:x/{n}": Usage(cost_usd=n) for n in range(80)}
    m = fed(two_threads()[:1])
    m(UsageLoaded(totals={"a": Usage()}, days={}, conversations={"a": kept}, at=NOW))
    agent = m.view().agents[0]
    assert len(agent.conversations) == MAX_IDLE
    assert agent.conversations[0].conversation == "thread:x/79"
    assert agent.conversations[0].usage.cost_usd == 79
    assert agent.state is AgentState.IDLE and agent.queue == 0


def test_what_a_conversation_shows_is_redacted() -> None:
    secret = "sk-live-7fa3c2d1"
    redactor = Redactor([secret])
    m = fed(two_threads()[:5], DashboardModel(clock=lambda: NOW, redactor=redactor))
    m(started("a", (1,), T39, session=f"sess-{secret}"))
    m(
        RunFinished(
            agent="a",
            result=result("a", (1,), 1, error=f"no {secret}", session_id=f"s-{secret}"),
            new=AgentState.IDLE,
            queue=0,
            conversation=T39,
            at=NOW,
        )
    )
    shown = json.dumps(snapshot.build(m.view(), None, NOW))
    assert secret not in shown and "s-***" in shown


# -- the snapshot, `status`


def test_status_json_written_in_pieces_is_the_snapshot_byte_for_byte(tmp_path: Path) -> None:
    """Without the HTTP API, status.json is written an agent at a time (nothing kept between
    changes); what it holds is the document `build` makes, key for key. With it, the body
    the API serves is written, and kept."""
    view = fed(two_threads()).view()
    whole = dumps(snapshot.build(view, 4, NOW))
    assert b"".join(snapshot.pieces(view, 4, NOW)) == whole
    empty = DashboardModel(clock=lambda: NOW).view()
    assert b"".join(snapshot.pieces(empty, None, NOW)) == dumps(snapshot.build(empty, None, NOW))
    m = fed(two_threads())
    files = snapshot.Snapshots(m, lambda: 4, tmp_path, clock=lambda: NOW)
    files.write_if_changed()
    written = (tmp_path / "status.json").read_bytes()
    assert written == dumps(snapshot.build(m.view(), 4, NOW))
    assert files._cached is None  # nothing kept
    files.serving = True
    m(changed("b", "idle", "queued", 1))
    files.write_if_changed(now=True)
    assert files._cached is not None
    assert (tmp_path / "status.json").read_bytes() == files._cached[2]
    assert asyncio.run(files.state()) is files._cached[2], "kept: nothing changed since"


def test_the_snapshot_lists_each_agents_conversations() -> None:
    data = snapshot.build(fed(two_threads()).view(), 4, NOW)
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    a, b = data["agents"]
    assert [c["conversation"] for c in a["conversations"]] == [T39, T41]
    t39, t41 = a["conversations"]
    assert t39 == {
        "conversation": T39,
        "state": "working",
        "since": iso(NOW - 8),
        "queue": 1,
        "batch": [1, 3],
        "attempt": 1,
        "retry_at": None,
        "session_id": "S39",
        "problem": "",
        "workspace": None,
        "usage": {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "cost_usd": 0.0},
        "last_run": None,
        "question": None,
    }
    assert t41["state"] == "retrying" and t41["attempt"] == 2 and t41["retry_at"]
    assert t41["usage"] == {
        "input_tokens": 1100,
        "output_tokens": 10,
        "cached_tokens": 0,
        "cost_usd": 1.25,
    }
    assert t41["last_run"]["exit_status"] == 1 and t41["last_run"]["event_ids"] == [2]
    assert t41["last_run"]["conversation"] == T41 and a["runs"][0]["conversation"] == T41
    assert a["queue"] == 1 and a["batch"] == [1, 3] and a["state"] == "working"
    (own,) = b["conversations"]
    assert own["conversation"] == "" and own["state"] == "idle" and own["last_run"] is None


def test_status_lists_the_conversations_under_their_agent_only_in_thread_mode() -> None:
    m = fed(two_threads())
    m(WorkspaceChanged(agent="a", conversation=T39, path="/w/39", ready=True, at=NOW))
    out = io.StringIO()
    statusfile.render(snapshot.build(m.view(), 4, NOW), out)
    lines = out.getvalue().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  a  "))
    assert lines[at + 1].split() == [T39, "working", "queue", "1", "$0.00", "in", "all"]
    retrying = lines[at + 2].split(maxsplit=7)  # its last failure after the figures
    assert retrying[:7] == [T41, "retrying", "queue", "0", "$1.25", "in", "all"]
    assert retrying[7].startswith("- ") and len(retrying[7]) > 2, retrying
    assert lines[at + 3].startswith("  b  ")
    assert len(lines) == at + 4 or not lines[at + 4].startswith("      ")
    # Agent mode: exactly today's lines.
    plain = io.StringIO()
    statusfile.render(snapshot.build(model().view(), None, NOW), plain)
    assert not [line for line in plain.getvalue().splitlines() if line.startswith("      ")]


# -- /metrics


def metric_lines(m: DashboardModel) -> list[str]:
    body = generate_latest(registry(Counts(), m)).decode()
    return [line for line in body.splitlines() if line.startswith("ghitwork_conversations{")]


def test_metrics_count_conversations_per_agent_and_state() -> None:
    found = metric_lines(fed(two_threads()))
    assert 'ghitwork_conversations{agent="a",state="working"} 1.0' in found
    assert 'ghitwork_conversations{agent="a",state="retrying"} 1.0' in found
    assert 'ghitwork_conversations{agent="a",state="idle"} 0.0' in found
    assert 'ghitwork_conversations{agent="b",state="idle"} 1.0' in found
    assert len(found) == 2 * len(AgentState)


# -- the TUI


def test_the_expanded_view_lists_the_conversations_most_active_first() -> None:
    m = fed(two_threads())
    body = text(draw(m, UiState(expanded=True), width=100))
    assert "a: working for 8s, 1 event(s) queued" in body
    assert "conversations (2):" in body
    rows = [line.split() for line in body.splitlines() if line.startswith("  thread:")]
    assert rows == [
        [T39, "working", "8s", "queue", "1", "last", "none", "$0.00"],
        [T41, "retrying", "in", "30s", "queue", "0", "last", "failed", "$1.25"],
    ]
    assert any(line.split()[-2:] == ["[2]", T41] for line in body.splitlines()), "last runs"
    # The strip stays one cell per agent.
    assert text(draw(m)).splitlines()[1].split()[:4] == ["a", "working", "8s", "+1"]


def test_the_conversations_are_cut_to_the_rows_the_screen_has() -> None:
    m = fed(two_threads())
    for n in range(30):
        m(changed("a", "idle", "queued", 1, f"thread:x/{n}"))
    c = canvas(100, 40)
    render(c, m.view(), UiState(expanded=True), NOW)
    body = text(c)
    assert "conversations (32):" in body and "… " in body
    assert body.splitlines()[3].startswith("a: working"), "the agent's first line still shows"
    listed = [line.split()[:2] for line in body.splitlines() if line.startswith("  thread:")]
    more = next(line for line in body.splitlines() if line.startswith("  … "))
    assert len(listed) + int(more.split()[1]) == 32
    assert listed[:3] == [[T39, "working"], ["thread:x/29", "queued"], ["thread:x/28", "queued"]]
    assert body.splitlines()[-2] == "dead letters: none", "nothing else is cut"


def test_agent_mode_has_no_conversation_list() -> None:
    body = text(draw(model(), UiState(expanded=True), width=100))
    assert "conversations" not in body and "(no thread)" not in body


# -- the status page (its script run by node on a few lines of DOM; test_status_page.py
# runs the real page in Chromium)

DOM = """
class El {
  constructor() {
    this.children = []; this.dataset = {}; this.className = ""; this.textContent = "";
  }
  appendChild(child) { this.children.push(child); }
  replaceChildren(...children) { this.children = children; }
}
const found = {};
const document = {
  createElement: () => new El(),
  getElementById: (id) => found[id] || (found[id] = new El()),
};
"""
SHOW = """
render(JSON.parse(require("fs").readFileSync(0, "utf8")));
for (const row of found.agents.children)
  console.log(JSON.stringify([row.className, row.dataset, row.children.map((c) => c.textContent)]));
"""


def page_rows(state: dict[str, Any]) -> list[list[Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node")
    page = (Path(__file__).parent.parent / "ghitwork" / "templates" / "status.html").read_text()
    script = re.search(r"<script>(.*)</script>", page, re.S)
    assert script is not None
    code = DOM + script.group(1).replace("refresh();\nsetInterval(refresh, 1000);", "") + SHOW
    done = subprocess.run(
        [node, "-e", code], input=json.dumps(state), capture_output=True, text=True, check=True
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_the_status_page_lists_the_conversations_under_their_agent() -> None:
    rows = page_rows(snapshot.build(fed(two_threads()).view(), 4, NOW))
    assert [(kind, data) for kind, data, _ in rows] == [
        ("", {"agent": "a"}),
        ("conversation", {"ofAgent": "a", "conversation": T39}),
        ("conversation", {"ofAgent": "a", "conversation": T41}),
        ("", {"agent": "b"}),
    ]
    assert rows[1][2][:5] == [T39, "working", "1", "1,3", "1/3"]
    assert rows[2][2][1:3] == ["retrying", "0"] and rows[2][2][6] == "$1.25"
    assert rows[2][2][8].startswith("failed [2] ")
    # Agent mode: one row per agent, as before.
    plain = page_rows(snapshot.build(model().view(), None, NOW))
    assert [kind for kind, _, _ in plain] == ["", "", ""]


# -- dead-letters


@pytest.fixture
def letters(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    kept = [
        DeadLetter(1, "a", ({"id": 2},), 3, 1, "exit 1", NOW, conversation=T41),
        DeadLetter(2, "b", ({"id": 7},), 3, 1, "exit 1", NOW),
    ]
    monkeypatch.setattr(commands, "current", lambda state_dir: kept)
    yield


@pytest.mark.usefixtures("letters")
def test_dead_letters_name_their_conversation() -> None:
    out = io.StringIO()
    assert commands.list_command(Path("."), False, out) == 0
    first, second = out.getvalue().splitlines()
    assert first.split("\t")[:2] == ["1", f"a [{T41}]"]
    assert second.split("\t")[:2] == ["2", "b"]
    out = io.StringIO()
    commands.list_command(Path("."), True, out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["conversation"] for r in records] == [T41, ""]


# -- through the real command (the flow publishing, in thread mode)

THREAD_AGENT = """\
import os, sys, time
sys.stdin.read()
conversation = os.environ["GHIT_WORK_CONVERSATION"]
print("tokens: 1200 in, 30 out", flush=True)
print("session: s-" + conversation.rsplit("/", 1)[-1], flush=True)
if conversation.endswith("/1"):  # thread 1 works until the test releases it
    while not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.02)
"""
E2E_T1, E2E_T2 = "thread:teams/ghit/ghit/1", "thread:teams/ghit/ghit/2"


def conversation_gauges(base: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        body = answer.read().decode()
    return {
        (sample.labels["agent"], sample.labels["state"]): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "ghitwork_conversations"
    }


def test_two_threads_in_status_and_metrics(setup: Setup) -> None:
    release = setup.path / "release"
    agent = setup.path / "thread_agent.py"
    agent.write_text(THREAD_AGENT)
    setup.write_config(
        {
            "a": {
                "cmd": [sys.executable, str(agent)],
                "conversations": "thread",
                "concurrency": 2,
                "env": {"RELEASE": str(release)},
                "usage_patterns": [r"tokens: (?P<input_tokens>\d+) in, (?P<output_tokens>\d+) out"],
                "price": {"input": 3.0, "output": 15.0},
                "session_id_pattern": r"session: (\S+)",
            },
            "b": {"event_kinds": ["pull-created"]},  # agent mode, beside it
        },
        tail=["--follow"],
        http="127.0.0.1:0",
    )
    validator = jsonschema.Draft202012Validator(SCHEMA)

    def status() -> dict[str, Any]:
        done = ghit_work("status", "--json", cwd=setup.path)
        assert done.returncode == 0, done.stderr
        current: dict[str, Any] = json.loads(done.stdout)
        validator.validate(current)
        return current

    def agent_a() -> dict[str, Any]:
        return next(agent for agent in status()["agents"] if agent["name"] == "a")

    def settled() -> dict[str, Any] | None:
        a = agent_a()
        states = {c["conversation"]: c["state"] for c in a["conversations"]}
        return a if states == {E2E_T1: "working", E2E_T2: "idle"} else None

    with Running(setup.path) as daemon:
        base = re.findall(r"serving on (\S+)", daemon.wait_for("serving on"))[0]
        write_events(
            setup.events,
            [event(1, scopes=[E2E_T1]), event(2, scopes=[E2E_T2]), event(3, "pull-created")],
        )
        a = poll(settled, what="thread 1 working, thread 2 done")
        t1, t2 = a["conversations"]
        assert (a["state"], a["batch"]) == ("working", [1])
        assert (t1["conversation"], t1["batch"], t1["last_run"]) == (E2E_T1, [1], None)
        assert (t2["conversation"], t2["batch"], t2["session_id"]) == (E2E_T2, [], "s-2")
        assert t2["last_run"]["outcome"] == "ok" and t2["last_run"]["event_ids"] == [2]
        assert t2["last_run"]["conversation"] == E2E_T2
        assert t2["usage"]["input_tokens"] == 1200 and t2["usage"]["cost_usd"] > 0
        b = next(agent for agent in status()["agents"] if agent["name"] == "b")
        assert [c["conversation"] for c in b["conversations"]] == [""]
        gauges = conversation_gauges(base)
        assert gauges[("a", "working")] == 1 and gauges[("a", "idle")] == 1
        assert gauges[("a", "queued")] == 0 and gauges[("b", "idle")] == 1
        text = ghit_work("status", cwd=setup.path).stdout.splitlines()
        at = next(i for i, line in enumerate(text) if line.startswith("  a "))
        assert text[at + 1].split()[:4] == [E2E_T1, "working", "queue", "0"]
        assert text[at + 2].split()[:4] == [E2E_T2, "idle", "queue", "0"]
        assert text[at + 3].startswith("  b "), "agent mode: no conversation lines"
        assert f"agent a [{E2E_T2}]: working -> idle, exit 0" in daemon.text
        release.touch()
        poll(lambda: agent_a()["state"] == "idle", what="thread 1 to end")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    # After a restart, the threads' usage kept in state_dir is listed (idle).
    with Running(setup.path) as daemon:
        daemon.wait_for("serving on")
        kept = poll(
            lambda: {c["conversation"]: c for c in agent_a()["conversations"]} or None,
            what="the threads kept in state_dir",
        )
        assert set(kept) == {E2E_T1, E2E_T2}
        assert kept[E2E_T1]["usage"]["output_tokens"] == 30
        assert {c["state"] for c in kept.values()} == {"idle"}
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_a_conversation_queued_without_a_read_becomes_the_most_recently_active() -> None:
    """Saved events queued again at start (no EventsRouted before them): a conversation the
    model knew as idle (from the usage kept) moves to the most recently active; one that
    the same read had just made so stays where it is."""
    m = DashboardModel(clock=lambda: NOW)
    m(ConfigApplied(config=config(threads("a")), at=NOW - 60))
    cost = Usage(input_tokens=10, cost_usd=0.1)
    m(UsageLoaded(totals={"a": cost}, days={}, conversations={"a": {T39: cost, T41: cost}}))
    assert list(m.agents["a"].conversations) == [T39, T41]
    m(ConversationsQueued(agent="a", queued=((T39, AgentState.IDLE, 1),), at=NOW))
    assert list(m.agents["a"].conversations) == [T41, T39]
    m(events_routed(((ev(5, T41), ("a",)),), {"a"}, NOW + 1))
    m(ConversationsQueued(agent="a", queued=((T41, AgentState.IDLE, 1),), at=NOW + 1))
    assert list(m.agents["a"].conversations) == [T39, T41]
    assert {c.conversation: (str(c.state), c.queue) for c in m.view().agents[0].conversations} == {
        T39: ("queued", 1),
        T41: ("queued", 1),
    }


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["grow", "idle", "queued", "working"]),
            st.integers(0, 60),  # which thread
            st.integers(0, 3),  # how many events (0: a dead letter's empty hand-back)
        ),
        max_size=120,
    )
)
def test_a_routed_event_grows_its_conversation_as_conversation_and_changed_do(
    steps: list[tuple[str, int, int]],
) -> None:
    """`_Agent.grew` (the catch-up's path for every conversation of every read) leaves the
    agent as `conversation` + `changed` would: the same conversations in the same order of
    recency, the same counts of states, the same quiet ones (so the same are forgotten
    beyond MAX_IDLE) and the same queues."""
    fast, slow = (_Agent("a", AgentState.IDLE, NOW, config=agent_config("a")) for _ in "ab")
    for at, (step, thread, count) in enumerate(steps, start=1):
        key = f"thread:teams/t/r/{thread}"
        if step == "grow":
            fast.grew(key, count, NOW + at)
            found = slow.conversation(key, NOW + at)
            found.queue += count
            found.active = NOW + at
            slow.changed(found)
            continue
        state = {"idle": AgentState.IDLE, "queued": AgentState.QUEUED}.get(step)
        for current in (fast, slow):
            found = current.conversation(key, NOW + at)
            found.state = state or AgentState.WORKING
            found.queue = 0 if state is AgentState.IDLE else found.queue
            current.changed(found)
    for current in (fast, slow):
        current.settle(NOW + len(steps) + 1)

    def kept(current: _Agent) -> tuple[object, ...]:
        shown = [
            (c.key, c.state, c.queue, c.active, c.counted) for c in current.conversations.values()
        ]
        counts = {state: n for state, n in current.states.items() if n}
        return shown, counts, list(current.quiet), current.state

    assert kept(fast) == kept(slow)
    assert len(fast.quiet) <= MAX_IDLE
