"""The dashboard drawn headless on an asciimatics Canvas, read back cell by cell."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import MagicMock

from asciimatics.screen import Canvas, Screen
from msgspec.structs import replace
from rxfakes import agent_config, events_routed

from ghitwork.bus.changes import (
    AgentChanged,
    AgentState,
    ConfigApplied,
    DeadLettersRedelivered,
    EventSkipped,
    EventsRestored,
    EventsRouted,
    RunFinished,
    RunStarted,
    SourceExited,
    SourceRetry,
    SourceStarted,
)
from ghitwork.config.model import Config
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.events import Event, Malformed
from ghitwork.model.redact import Redactor
from ghitwork.model.results import RunResult
from ghitwork.observe.dashboard import DashboardModel, View
from ghitwork.tui.panes import UiState, render
from ghitwork.tui.ui import Controls, handle_key

NOW = 1_800_000_000.0


def canvas(width: int = 80, height: int = 24) -> Canvas:
    screen = MagicMock(spec=Screen)
    screen.colours, screen.unicode_aware = 8, True
    screen.width, screen.height = width, height
    return Canvas(screen, height, width, 0, 0)


def row(c: Canvas, y: int) -> str:
    return "".join(chr(c.get_from(x, y)[0]) for x in range(c.width)).rstrip()


def text(c: Canvas) -> str:
    return "\n".join(row(c, y) for y in range(c.height))


def cell(c: Canvas, needle: str, y: int) -> tuple[int, int, int, int]:
    x = row(c, y).index(needle)
    return c.get_from(x, y)  # type: ignore[no-any-return]


def model() -> DashboardModel:
    m = DashboardModel(clock=lambda: NOW)
    config = Config(
        path=Path("ghit-work.toml"),
        limit=2,
        retry=300.0,
        agents=(
            agent_config("codex", budget="20/1h"),
            agent_config("claude"),
            agent_config("off", enabled=False),
        ),
    )
    m(ConfigApplied(config=config, at=NOW))
    routed: dict[int, Event] = {}
    for ident, kind, actor, title, agents in [
        (1, "reply-created", "alice", "Add rate limiting", ("codex", "claude")),
        (2, "pull-created", "bob", "Fix the docs", ("claude",)),
        (3, "user-mention", "carol", "Flaky test", ()),
    ]:
        event = routed[ident] = Event(
            ident,
            kind,
            actor,
            ("thread:teams/ghit/ghit/39",),
            {"id": ident, "kind": kind, "summary": {"thread_title": title}},
        )
        m(events_routed(((event, agents),), at=NOW))
    m(AgentChanged(agent="codex", old=AgentState.IDLE, new=AgentState.QUEUED, queue=1, at=NOW - 20))
    m(
        RunStarted(
            agent="codex",
            old=AgentState.QUEUED,
            event_ids=(1,),
            pid=None,
            resumed=False,
            redelivered=False,
            session_id="S9",
            queue=0,
            at=NOW - 12,
            shown=(routed[1],),
        )
    )
    failed = RunResult(
        agent="claude",
        event_ids=(1, 2),
        command=("claude",),
        started=NOW - 30,
        ended=NOW - 28,
        returncode=3,
        log_files=("/logs/x-claude.prompt",),
    )
    m(RunFinished(agent="claude", result=failed, new=AgentState.IDLE, queue=0, at=NOW - 28))
    return m


def draw(m: DashboardModel, ui: UiState | None = None, width: int = 80, height: int = 24) -> Canvas:
    c = canvas(width, height)
    render(c, m.view(), ui or UiState(), NOW)
    return c


def test_the_header_shows_config_limit_retry_health_and_counts() -> None:
    header = row(draw(model(), width=120), 0)
    assert header.startswith(" ghit-work  ghit-work.toml  limit 2  retry 5m  starting")
    assert "events 3  batches 1  failures 1" in header


def test_the_header_counts_down_while_retrying() -> None:
    m = model()
    m(SourceRetry(delay=8.0, used=12.0, window=300.0, reason="exit 1", at=NOW - 3))
    c = draw(m, width=140)
    assert "retrying (next try in 5s, 12s of 5m used)" in row(c, 0)
    assert cell(c, "retrying", 0)[1] == Screen.COLOUR_YELLOW


def test_the_strip_has_one_cell_per_agent_with_state_word_and_colour() -> None:
    c = draw(model())
    strip = row(c, 1)
    assert "codex working 12s" in strip
    assert "claude failing" in strip, "an idle agent whose last run failed shows failing"
    assert "off disabled" in strip
    assert cell(c, "codex working", 1)[1] == Screen.COLOUR_GREEN
    assert cell(c, "claude failing", 1)[1] == Screen.COLOUR_RED
    assert cell(c, "off disabled", 1)[1] == Screen.COLOUR_BLUE
    assert cell(c, "codex working", 1)[2] == Screen.A_REVERSE, "the selected agent"
    ui = UiState(selected=1)
    assert cell(draw(model(), ui), "claude failing", 1)[2] == Screen.A_REVERSE


def test_a_small_terminal_shows_header_strip_and_the_focused_pane() -> None:
    m = model()
    m(EventSkipped(malformed=Malformed("not JSON", '"garbage"'), at=NOW))
    c = draw(m, UiState(focus=0))
    assert "Attention (2)" in row(c, 2)
    body = text(c)
    assert 'malformed input skipped (not JSON): "garbage"' in body
    assert "agent claude: working -> idle, exit 3" in body
    events = text(draw(m, UiState(focus=1)))
    assert "1 reply-created        alice      -> codex, claude  thread:teams/ghit/ghit" in events
    assert "-> codex, claude" in events and "-> no agent" in events
    log = text(draw(m, UiState(focus=2)))
    assert "agent codex: queued -> working, batch of 1 event [1]" in log
    assert row(c, 23).startswith(" q quit  Tab pane")


def test_a_tall_terminal_stacks_all_three_panes() -> None:
    body = text(draw(model(), height=40))
    assert "── Attention (1) " in body and "── Events " in body and "── Log " in body


def test_the_expanded_view_shows_the_selected_agent_in_full() -> None:
    ui = UiState(expanded=True)
    body = text(draw(model(), ui, width=100))
    assert "codex: working for 12s, 0 event(s) queued" in body
    assert "username: codex" in body and "command:  true" in body
    assert "scopes:   team:ghit" in body and "kinds:    reply-created" in body
    assert "budget:   20/1h" in body and "session:  S9" in body
    assert "current batch [1]:" in body and "Add rate limiting" in body
    ui.selected = 1
    body = text(draw(model(), ui, width=100))
    assert "exit 3" in body and "[1-2]" in body and "logs: /logs/x-claude.*" in body


def test_the_filter_narrows_the_events_pane() -> None:
    ui = UiState(focus=1, filter="docs")
    c = draw(model(), ui, width=120)
    assert "Events [filter: docs]" in row(c, 2)
    body = text(c)
    assert "Fix the docs" in body and "Add rate limiting" not in body
    ui.filter = "nothing-like-this"
    assert "no event matches" in text(draw(model(), ui))


def test_scrolling_moves_back_through_a_pane() -> None:
    m = model()
    for i in range(100):
        m.note(f"note {i}")
    ui = UiState(focus=0)
    assert "note 99" in text(draw(m, ui))
    ui.scroll["attention"] = 50
    scrolled = text(draw(m, ui))
    assert "note 49" in scrolled and "note 99" not in scrolled and "50 newer" in scrolled


class FakeControls:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def controls(self) -> Controls:
        def terminate(name: str) -> int:
            self.calls.append(f"term {name}")
            return 4242

        return Controls(
            quit=lambda: self.calls.append("quit"),
            terminate=terminate,
            reload=lambda: self.calls.append("reload"),
        )


def press(keys: list[int], ui: UiState, m: DashboardModel, fake: FakeControls) -> View:
    view = m.view()
    for key in keys:
        handle_key(key, ui, m.view(), m, fake.controls())
    return view


def test_keys_select_focus_expand_filter_and_control() -> None:
    m, ui, fake = model(), UiState(), FakeControls()
    press([Screen.KEY_RIGHT, Screen.KEY_RIGHT, Screen.KEY_RIGHT], ui, m, fake)
    assert ui.selected == 0, "Right wraps around the three agents"
    press([Screen.KEY_LEFT], ui, m, fake)
    assert ui.selected == 2
    press([Screen.KEY_TAB], ui, m, fake)
    assert ui.pane == "events"
    press([10], ui, m, fake)
    assert ui.expanded
    press([Screen.KEY_ESCAPE], ui, m, fake)
    assert not ui.expanded
    press([ord("/"), ord("b"), ord("o"), ord("x"), Screen.KEY_BACK, 10], ui, m, fake)
    assert (ui.filter, ui.editing) == ("bo", False)
    press([Screen.KEY_ESCAPE], ui, m, fake)
    assert ui.filter == ""
    press([Screen.KEY_UP, Screen.KEY_UP, Screen.KEY_DOWN], ui, m, fake)
    assert ui.scroll["events"] == 1
    ui.selected = 0
    press([ord("k")], ui, m, fake)
    assert fake.calls == ["term codex"]
    assert "k: SIGTERM sent to agent codex (pid 4242)" in m.view().attention[-1]
    ui.selected = 1
    press([ord("k")], ui, m, fake)
    assert "k: claude is not working; nothing to stop" in m.view().attention[-1]
    press([ord("r"), ord("q")], ui, m, fake)
    assert fake.calls == ["term codex", "reload", "quit"]


def test_the_view_is_rebuilt_only_when_something_changed() -> None:
    m = model()
    first = m.view()
    assert m.view() is first
    m.note("x")
    assert m.view() is not first


def test_the_events_pane_follows_a_flood_whatever_memory_the_old_events_leave() -> None:
    """Old events leave the pane's memory and new ones may land at their addresses: a line is
    never reused for another event (a flood showed stale titles once)."""
    model = DashboardModel()
    ident = 0
    for _ in range(40):
        burst = []
        for _ in range(600):  # more than the pane keeps: every old event is let go
            ident += 1
            summary = {"summary": {"thread_title": f"t{ident}"}}
            burst.append((Event(ident, "reply-created", "alice", ("team:ghit",), summary), ()))
        model(events_routed(burst))
        del burst
        lines = model.view().events
        assert [(line.id, line.title) for line in lines[-3:]] == [
            (i, f"t{i}") for i in range(ident - 2, ident + 1)
        ]
        assert all(line.title == f"t{line.id}" for line in lines)


def routed(*idents: int, to: tuple[str, ...] = ("codex",)) -> EventsRouted:
    events = (
        Event(i, "reply-created", "alice", ("team:ghit",), {"id": i, "summary": {}}) for i in idents
    )
    return events_routed([(event, to) for event in events], at=NOW)


def test_a_working_agents_queue_grows_the_moment_events_are_routed_to_it() -> None:
    """SPEC §11: not at its next state change (the strip and the expanded view)."""
    m = model()  # codex is working on [1]
    m(routed(7, 8))
    assert [(a.name, a.queue) for a in m.view().agents][:2] == [("codex", 2), ("claude", 0)]
    assert "codex working 12s +2" in row(draw(m), 1)
    assert "codex: working for 12s, 2 event(s) queued" in text(draw(m, UiState(expanded=True)))
    letter = DeadLetter(1, "claude", ({"id": 2},), 3, 1, "exit 1", NOW)
    m(DeadLettersRedelivered(letters=(letter,), by="ghit-work redeliver"))
    assert "claude failing +1" in row(draw(m, width=120), 1), "handed back: queued too"
    # A change that carries the queue sets it exactly.
    m(AgentChanged(agent="claude", old=AgentState.IDLE, new=AgentState.QUEUED, queue=1, at=NOW))
    m(
        RunStarted(
            agent="claude",
            old=AgentState.QUEUED,
            event_ids=(2,),
            pid=None,
            resumed=False,
            redelivered=True,
            session_id=None,
            queue=0,
            at=NOW,
        )
    )
    assert [a.queue for a in m.view().agents][:2] == [2, 0]


def test_saved_events_count_in_the_queue_even_for_an_agent_that_may_not_run_them() -> None:
    """A disabled agent's saved events are queued at start: no state change says so."""
    m = model()
    before = {a.name: a.queue for a in m.view().agents}
    m(EventsRestored(counts={"claude": 3}, at=NOW))
    after = {a.name: a.queue for a in m.view().agents}
    assert after["claude"] == before["claude"] + 3
    assert after["codex"] == before["codex"]


SECRET = "sk-live-7fa3c2d1"


def test_every_text_a_view_shows_is_redacted_with_the_secrets_of_now() -> None:
    redactor = Redactor()
    m = DashboardModel(clock=lambda: NOW, redactor=redactor)
    m(ConfigApplied(config=Config(path=Path("x.toml"), agents=(agent_config("codex"),)), at=NOW))
    session = f"sess-{SECRET}"
    m(
        RunStarted(
            agent="codex",
            old=AgentState.QUEUED,
            event_ids=(1,),
            pid=None,
            resumed=True,
            redelivered=False,
            session_id=session,
            queue=0,
            at=NOW,
        )
    )
    failed = RunResult(
        agent="codex",
        event_ids=(1,),
        command=("x",),
        started=NOW - 2,
        ended=NOW,
        error=f"cannot start {SECRET}",
        session_id=session,
    )
    letter = DeadLetter(1, "codex", ({"id": 1},), 1, None, f"cannot start {SECRET}", NOW)
    m(RunFinished(agent="codex", result=failed, new=AgentState.IDLE, queue=0, dead_letter=letter))
    ui = UiState(expanded=True)
    before = text(draw(m, ui, width=120)) + "\n".join(m.view().attention)
    assert SECRET in before, "not a secret yet"
    redactor.update([SECRET])  # a reload made it one: what was kept is redacted too
    view = m.view()
    agent = view.agents[0]
    assert agent.session_id == "sess-***" and agent.problem == "cannot start ***"
    assert agent.dead_letters[0].error == "cannot start ***"
    assert agent.runs[-1].session_id == "sess-***" and agent.runs[-1].error == "cannot start ***"
    shown = text(draw(m, ui, width=120)) + "\n".join(view.attention) + "\n".join(view.log)
    assert SECRET not in shown and "session:  sess-***" in shown
    assert "resuming session sess-***" in "\n".join(view.log)


def test_a_stream_that_ghit_work_ended_leaves_health_as_it_was() -> None:
    """A drain's end, a stop or a restart is not the stream failing: still healthy."""
    m = DashboardModel(clock=lambda: NOW)
    m(SourceStarted(pid=1, argv=("tail",), cursor=None, at=NOW))
    m(SourceExited(status=0, reason="no message on stderr", expected=True, at=NOW))
    assert m.view().health == "healthy"
    m(SourceExited(status=1, reason="boom", at=NOW))
    assert m.view().health == "retrying", "an exit ghit-work did not ask for is a failure"


def test_a_secret_written_into_a_command_is_shown_redacted() -> None:
    from ghitwork.model.redact import Redactor

    m = DashboardModel(clock=lambda: NOW, redactor=Redactor([SECRET]))
    agent = replace(agent_config("codex"), cmd=("codex", f"--key={SECRET}"))
    m(ConfigApplied(config=Config(path=Path("x.toml"), agents=(agent,))))
    (shown,) = m.view().agents
    assert shown.config is not None and shown.config.cmd == ("codex", "--key=***")
    assert SECRET not in text(draw(m, UiState(expanded=True)))
