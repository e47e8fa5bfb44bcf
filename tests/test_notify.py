"""Notifications (SPEC §13), in-process: the causes read from state bus changes, the outbox
(durable, deduplicated, bounded), and the notifier's sending (retries with backoff, never in
the publisher's way). The real command, real receivers: tests/test_notify_integration.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from ghitwork.bus.changes import (
    AgentChanged,
    AgentPaused,
    AgentState,
    Change,
    ConfigApplied,
    DeadLettersLoaded,
    EventsRouted,
    Level,
    Notice,
    QuotaChanged,
    RunFinished,
    RunStarted,
    SourceExited,
    SourceRetry,
    SourceStarted,
    StateBus,
)
from ghitwork.config import prompt
from ghitwork.config.model import AgentConfig, Config, Notify, secret_values
from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.events import Event
from ghitwork.model.redact import Redactor
from ghitwork.model.results import RunResult
from ghitwork.notify import send
from ghitwork.notify.causes import Causes
from ghitwork.notify.compose import Notification, thread_url
from ghitwork.notify.delivery import backoff
from ghitwork.notify.notifier import Notifier
from ghitwork.notify.outbox import Entry, Outbox
from ghitwork.notify.send import Sender

URL = "json://127.0.0.1:9/hook"


def ev(ident: int, thread: int = 39) -> dict[str, Any]:
    return {
        "id": ident,
        "kind": "reply-created",
        "actor_user_username": "alice",
        "scopes": [f"thread:teams/ghit/ghit/{thread}"],
        "summary": {
            "web_url": f"https://ghit.example/teams/ghit/ghit/threads/{thread}?reply_root={ident}",
            "thread_title": "Add rate limiting",
        },
    }


def event(ident: int) -> Event:
    data = ev(ident)
    return Event(ident, data["kind"], "alice", tuple(data["scopes"]), data)


def letter(ident: int, agent: str = "codex", error: str = "exit 1") -> DeadLetter:
    return DeadLetter(
        id=ident,
        agent=agent,
        events=(ev(101), ev(102)),
        attempts=3,
        exit_status=1,
        error=error,
        time=1000.0,
        conversation="thread:teams/ghit/ghit/39",
    )


def result(agent: str = "codex", **fields: Any) -> RunResult:
    return RunResult(
        agent=agent, event_ids=(101, 102), command=("x",), started=1.0, ended=2.0, **fields
    )


def finished(
    dead: DeadLetter | None = None, new: AgentState = AgentState.IDLE, **fields: Any
) -> RunFinished:
    return RunFinished(
        agent="codex",
        result=result(**fields),
        new=new,
        queue=0,
        dead_letter=dead,
        conversation="thread:teams/ghit/ghit/39",
    )


def started(agent: str = "codex") -> RunStarted:
    return RunStarted(
        agent=agent,
        old=AgentState.QUEUED,
        event_ids=(101, 102),
        pid=1,
        resumed=False,
        redelivered=False,
        session_id=None,
        queue=0,
        shown=(event(101), event(102)),
        conversation="thread:teams/ghit/ghit/39",
    )


def changed(
    new: AgentState | str, old: AgentState | str = AgentState.QUEUED, reason: str = ""
) -> AgentChanged:
    return AgentChanged(agent="codex", old=old, new=new, queue=1, reason=reason)  # type: ignore[arg-type]


# -- the causes


def test_a_dead_letter_notifies_once_with_agent_conversation_events_and_thread_url() -> None:
    causes = Causes()
    found = causes.on(finished(letter(7, error="exit 1"), last_stderr="error: boom\n"))
    assert [n.cause for n in found] == ["dead-letter"]
    note = found[0]
    assert note.key == "dead-letter:7"
    assert note.agent == "codex" and note.kind == "failure"
    assert note.title == "ghit-work: dead letter 7 (codex)"
    assert note.event_ids == (101, 102)
    assert note.web_url == "https://ghit.example/teams/ghit/ghit/threads/39"
    lines = note.body.splitlines()
    assert lines[0] == (
        "codex's batch became dead letter 7 after 3 attempts: exit 1. "
        "Its last line on stderr: error: boom"
    )
    assert "agent: codex" in lines
    assert "conversation: thread:teams/ghit/ghit/39" in lines
    assert "events: 101-102" in lines
    assert "thread: https://ghit.example/teams/ghit/ghit/threads/39" in lines
    assert "  event 101: https://ghit.example/teams/ghit/ghit/threads/39?reply_root=101" in lines
    assert "`ghit-work redeliver 7`" in note.body
    # The dead letters shown again at start are no cause, but one made after the last
    # seen (its RunFinished lost to a crash) is.
    assert causes.on(DeadLettersLoaded(letters=(letter(7),))) == []
    found = causes.on(DeadLettersLoaded(letters=(letter(7), letter(8))))
    assert [n.key for n in found] == ["dead-letter:8"]
    # At the first start with notifications, what is kept already is the past.
    fresh = Causes()
    assert fresh.on(DeadLettersLoaded(letters=(letter(1), letter(2)))) == []
    assert fresh.dead_letters == 2


def test_needs_input_names_the_question_and_the_batch_and_notifies_once_until_it_runs() -> None:
    causes = Causes()
    assert causes.on(started()) == []
    found = causes.on(
        finished(new=AgentState.NEEDS_INPUT, needs_input=True, question="which branch?")
    )
    assert [n.cause for n in found] == ["needs-input"]
    note = found[0]
    assert "It asks: which branch?" in note.body
    assert note.event_ids == (101, 102)
    assert note.web_url == "https://ghit.example/teams/ghit/ghit/threads/39"
    assert "ghit-work resume codex thread:teams/ghit/ghit/39" in note.body
    assert causes.dirty
    # A restart shows the parked conversation again: not news (the state is durable).
    again = Causes()
    again.load(causes.state())
    assert (
        again.on(
            AgentChanged(
                agent="codex",
                old=AgentState.IDLE,
                new=AgentState.NEEDS_INPUT,
                queue=0,
                reason="which branch?",
                conversation="thread:teams/ghit/ghit/39",
            )
        )
        == []
    )
    # Once it ran again, a new question is news again.
    again.on(started())
    found = again.on(finished(new=AgentState.NEEDS_INPUT, needs_input=True, question="and now?"))
    assert [n.cause for n in found] == ["needs-input"]


def test_throttled_notifies_on_entering_once_until_the_agent_runs_again() -> None:
    causes = Causes()
    found = causes.on(changed(AgentState.THROTTLED, reason="budget 2/1h used up; next run in 59m"))
    assert [n.cause for n in found] == ["throttled"]
    assert "budget 2/1h used up; next run in 59m" in found[0].body
    assert (
        causes.on(changed(AgentState.THROTTLED, old=AgentState.IDLE)) == []
    )  # another conversation
    causes.on(started())
    assert [n.cause for n in causes.on(changed(AgentState.THROTTLED))] == ["throttled"]


def test_quota_notifies_once_per_account_window_and_not_again_at_a_restart() -> None:
    causes = Causes()
    closed = QuotaChanged(
        account="max", until=1_800_000_000.0, agents=("a", "b"), agent="a", reason="resets 3pm"
    )
    found = causes.on(closed)
    assert [n.cause for n in found] == ["quota"]
    assert "account max" in found[0].body and "No run of a, b" in found[0].body
    assert "resets 3pm" in found[0].body
    # each agent of the account entering the state is no news; nor is the window restored
    assert causes.on(changed("quota")) == []
    assert causes.on(replace(closed, restored=True)) == []
    again = Causes()
    again.load(causes.state())
    assert again.on(closed) == []  # the same window, after a restart: sent already
    causes.on(QuotaChanged(account="max", until=None, agents=("a", "b")))
    later = replace(closed, until=1_800_090_000.0)
    assert [n.cause for n in causes.on(later)] == ["quota"]


THREAD = "thread:teams/ghit/ghit/39"
THREAD_URL = "https://ghit.example/teams/ghit/ghit/threads/39"


def test_quota_and_throttled_say_the_conversation_its_events_and_the_thread_url() -> None:
    """SPEC §13: each notification says the conversation, the event ids and the thread's
    web URL: quota's, those of the run that hit the limit; throttled's, those held back."""
    causes = Causes()
    causes.on(started())
    limit = QuotaChanged(
        account="max",
        until=1_800_000_000.0,
        agents=("codex",),
        agent="codex",
        reason="resets 3pm",
        conversation=THREAD,
        event_ids=(101, 102),
    )
    (quota,) = causes.on(limit)
    assert f"conversation: {THREAD}" in quota.body and "events: 101-102" in quota.body
    assert f"thread: {THREAD_URL}" in quota.body and quota.web_url == THREAD_URL
    held = replace(
        changed(AgentState.THROTTLED, reason="budget 2/1h used up"),
        conversation=THREAD,
        waiting=(event(103), event(104)),
    )
    (throttled,) = causes.on(held)
    assert f"conversation: {THREAD}" in throttled.body and "events: 103-104" in throttled.body
    assert f"thread: {THREAD_URL}" in throttled.body and throttled.event_ids == (103, 104)


def test_a_pause_notifies_but_a_pause_restored_at_start_does_not() -> None:
    causes = Causes()
    found = causes.on(
        AgentPaused(
            agent="codex",
            paused=True,
            until=None,
            reason="deploying",
            by="ghit-work pause",
            since=5.0,
        )
    )
    assert [n.cause for n in found] == ["paused"]
    assert found[0].key == "paused:codex:5.000000"
    assert "codex was paused by ghit-work pause until resumed (deploying)" in found[0].body
    # Restored at start: the same key, so it is news only if it never was (the outbox says).
    restored = causes.on(AgentPaused(agent="codex", paused=True, since=5.0, restored=True))
    assert [n.key for n in restored] == ["paused:codex:5.000000"]
    assert "codex is paused (since 1970-01-01T00:00:05.000Z)" in restored[0].body
    assert causes.on(AgentPaused(agent="codex", paused=False, by="ghit-work resume")) == []


def test_the_fatal_line_and_internal_errors_are_internal_errors() -> None:
    causes = Causes()
    fatal = causes.on(Notice(level=Level.ERROR, topic="fatal", message="routing failed (boom)"))
    assert [n.cause for n in fatal] == ["internal-error"]
    assert fatal[0].body.startswith("ghit-work stops: routing failed (boom)")
    internal = causes.on(Notice(level=Level.ERROR, topic="internal", message="Task exception"))
    assert [n.cause for n in internal] == ["internal-error"]
    assert causes.on(Notice(level=Level.WARNING, topic="internal", message="x")) == []
    assert causes.on(Notice(level=Level.ERROR, topic="notify", message="cannot send")) == []


def source_exit(at: float) -> SourceExited:
    return SourceExited(at=at, status=1, reason="error: cannot connect")


def test_a_blip_of_the_stream_is_no_news() -> None:
    causes = Causes(failing_after=30, healthy_after=10)
    assert causes.on(source_exit(100)) == []
    assert causes.on(SourceRetry(at=100, delay=0.5, used=0, window=300, reason="exit 1")) == []
    assert causes.on(SourceStarted(at=100.5, pid=1, argv=(), cursor=None)) == []
    assert causes.tick(111) == []  # healthy again after 10 s: never reported
    assert causes.due() is None
    assert causes.tick(200) == []


def test_a_failing_stream_notifies_once_per_episode_and_healthy_once_it_reads_again() -> None:
    causes = Causes(failing_after=30, healthy_after=10)
    causes.on(source_exit(100))
    causes.on(SourceRetry(at=100, delay=0.5, used=0, window=300, reason="exit status 1: down"))
    assert causes.due() == 130
    failing = causes.tick(130)
    assert [n.cause for n in failing] == ["stream-failing"]
    assert "has been failing for 30s: exit status 1: down" in failing[0].body
    # Still failing, restarted again and again: the same episode, no second notification.
    for at in (131, 140, 160):
        causes.on(SourceStarted(at=at, pid=1, argv=(), cursor=None))
        causes.on(source_exit(at + 0.1))
        assert (
            causes.on(SourceRetry(at=at + 0.1, delay=1, used=at - 100, window=300, reason="x"))
            == []
        )
    assert causes.tick(200) == []
    # The restart survives a restart of ghit-work: the episode was sent.
    later = Causes(failing_after=30, healthy_after=10)
    later.load(causes.state())
    later.on(source_exit(300))
    assert later.tick(400) == []
    later.on(SourceStarted(at=400, pid=2, argv=(), cursor=5))
    healthy = later.on(EventsRouted(at=401, routes=()))
    assert [n.cause for n in healthy] == ["stream-healthy"]
    assert "it reads events again" in healthy[0].body
    assert later.on(EventsRouted(at=402, routes=())) == []
    assert later.state()["stream_failing"] is None


def test_giving_up_on_the_stream_notifies_at_once() -> None:
    causes = Causes(failing_after=30)
    causes.on(source_exit(100))
    found = causes.on(
        Notice(at=101, level=Level.ERROR, topic="tail-events", message="gave up: the stream ...")
    )
    assert [n.cause for n in found] == ["stream-failing"]
    assert "gave up on the event stream: gave up: the stream ..." in found[0].body


def test_thread_url_drops_the_query_and_fragment() -> None:
    assert (
        thread_url("https://g.example/t/threads/39?reply_root=1#x")
        == "https://g.example/t/threads/39"
    )


# -- the outbox


def entry(key: str, target: str = "t1", at: float | None = None) -> Entry:
    return Entry(
        id=0,
        key=key,
        target=target,
        cause="dead-letter",
        title="t",
        body="b",
        kind="info",
        at=time.time() if at is None else at,
    )


def test_the_outbox_keeps_pending_entries_and_keys_across_a_crash(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "notify")
    box.add(entry("dead-letter:1"))
    box.add(entry("dead-letter:2"))
    box.done(box.pending[1], "sent")
    box.save_state({"throttled": {"codex": "k"}})
    # No close, no fsync: what a kill -9 leaves (plus a line torn by it).
    with (tmp_path / "notify" / "outbox.jsonl").open("a") as handle:
        handle.write('{"add": {"id": 3, "key"')
    assert oct((tmp_path / "notify" / "outbox.jsonl").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "notify").stat().st_mode & 0o777) == "0o700"
    again = Outbox(tmp_path / "notify")
    again.open()
    assert [e.key for e in again.pending.values()] == ["dead-letter:2"]
    assert again.seen("dead-letter:1") and again.seen("dead-letter:2")
    assert not again.seen("dead-letter:3")
    assert again.state == {"throttled": {"codex": "k"}}
    assert again.unreadable == 1
    assert again.next_id == 3
    # The open compacted it: only what is pending, the keys and the state.
    records = [
        json.loads(line) for line in (tmp_path / "notify" / "outbox.jsonl").read_text().splitlines()
    ]
    assert records == [
        {"keys": ["dead-letter:1"]},
        {"state": {"throttled": {"codex": "k"}}},
        {"add": again.pending[2].record()},
    ]


def test_the_outbox_is_bounded_dropping_the_oldest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "notify", most=3)
    dropped = []
    for number in range(5):
        dropped += box.add(entry(f"k{number}"))
    assert [e.key for e in dropped] == ["k0", "k1"]
    assert [e.key for e in box.pending.values()] == ["k2", "k3", "k4"]
    assert box.dropped == 2
    assert box.seen("k0")  # dropped is not forgotten: it is not queued again
    again = Outbox(tmp_path / "notify", most=3)
    again.open()
    assert [e.key for e in again.pending.values()] == ["k2", "k3", "k4"]


def test_nothing_is_written_while_there_is_nothing_to_keep(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "notify")
    box.open()
    assert not (tmp_path / "notify").exists()


# -- the notifier


class FakeSender(Sender):
    """Answers with `answer(url, title, body)` (True, a reason, or None: hangs), after
    `delay` seconds; records every attempt."""

    def __init__(
        self, answer: Callable[[str, str, str], bool | str | None] = lambda *a: True
    ) -> None:
        super().__init__(timeout=0.5)
        self.answer = answer
        self.attempts: list[tuple[str, str, str, str]] = []
        self.delivered: list[tuple[str, str, str]] = []

    def start(self, url: str, title: str, body: str, kind: str) -> asyncio.Future[tuple[bool, str]]:
        self.attempts.append((url, title, body, kind))
        future: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        answer = self.answer(url, title, body)
        if answer is True:
            self.delivered.append((url, title, body))
            future.set_result((True, ""))
        elif isinstance(answer, str):
            future.set_result((False, answer))
        else:
            asyncio.get_running_loop().call_later(0.6, future.set_result, (False, "timed out"))
        return future

    def warm(self, urls: list[str]) -> None:
        pass


def config_for(tmp_path: Path, *targets: Notify) -> Config:
    agent = AgentConfig(
        name="codex",
        cmd=("true",),
        username="codex",
        event_scopes=("team:ghit",),
        event_kinds=("reply-created",),
        workdir=tmp_path,
        prompt=prompt.default(),
    )
    return Config(
        path=tmp_path / "ghit-work.toml",
        agents=(agent,),
        state_dir=tmp_path / "state",
        notify=targets,
    )


def everything(url: str = URL, agents: frozenset[str] | None = None) -> Notify:
    from ghitwork.config.model import NOTIFY_CAUSES

    return Notify(url, frozenset(NOTIFY_CAUSES), agents)


async def settle(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_each_target_gets_what_it_asked_for_redacted_and_each_cause_once(tmp_path: Path) -> None:
    secret = "sk-live-0123456789abcdef"
    targets = (
        everything("json://127.0.0.1:9/all"),
        Notify("json://127.0.0.1:9/other", frozenset({"dead-letter"}), frozenset({"claude"})),
        Notify("json://127.0.0.1:9/stream", frozenset({"stream-failing"})),
    )
    config = config_for(tmp_path, *targets)
    bus = StateBus()
    redactor = Redactor(secret_values({"OPENAI_API_KEY": secret}, config))
    sender = FakeSender()

    async def main() -> None:
        notifier = Notifier(config, bus, redactor, sender=sender)
        notifier.start()
        bus.publish(finished(letter(1, error=f"exit 1: bad key {secret}")))
        bus.publish(finished(letter(1)))  # the same cause again: nothing more
        await settle(lambda: len(sender.delivered) == 1)
        await asyncio.sleep(0.05)
        await notifier.close()

    asyncio.run(main())
    assert len(sender.delivered) == 1
    url, _title, body = sender.delivered[0]
    assert url == "json://127.0.0.1:9/all"
    assert secret not in body and "bad key ***" in body


def test_a_failed_send_is_retried_with_backoff_and_reported_once_a_minute(tmp_path: Path) -> None:
    config = config_for(tmp_path, everything())
    bus = StateBus()
    lines: list[Notice] = []
    bus.changes.subscribe(
        lambda change: lines.append(change) if isinstance(change, Notice) else None
    )
    answers = iter(["error=500", "error=500", "error=500", True, True])
    sender = FakeSender(lambda *a: next(answers))  # type: ignore[arg-type]

    async def main() -> None:
        notifier = Notifier(config, bus, sender=sender, backoff_base=0.01)
        notifier.start()
        bus.publish(finished(letter(1)))
        bus.publish(finished(letter(2)))
        await settle(lambda: len(sender.delivered) == 2)
        await notifier.close()

    asyncio.run(main())
    assert len(sender.attempts) == 5
    assert [d[1] for d in sender.delivered] == [
        "ghit-work: dead letter 1 (codex)",
        "ghit-work: dead letter 2 (codex)",
    ]
    failed = [n.message for n in lines if n.topic == "notify" and n.level is Level.WARNING]
    assert (
        failed[0] == "cannot send to notify[0] (json://): error=500; retrying in 0.01s (2 waiting)"
    )
    # The next two within the minute: counted, and said when it ends (here: at the stop).
    assert len(failed) == 2
    assert failed[1].startswith("cannot send to notify[0] (json://): error=500; retrying in 0.04s")
    assert "(2 more times in the last" in failed[1]
    assert any("takes notifications again (after 3 failed attempt(s))" in n.message for n in lines)
    assert [round(backoff(n), 3) for n in (1, 2, 3, 10, 20)] == [1.0, 2.0, 4.0, 300.0, 300.0]


def test_a_hanging_target_never_delays_the_publisher_nor_the_other_targets(tmp_path: Path) -> None:
    config = config_for(
        tmp_path, everything("json://127.0.0.1:9/hangs"), everything("json://127.0.0.1:9/fine")
    )
    bus = StateBus()
    sender = FakeSender(lambda url, *a: True if url.endswith("fine") else None)
    publish_took: list[float] = []

    async def main() -> None:
        notifier = Notifier(config, bus, sender=sender, backoff_base=10)
        notifier.start()
        for ident in range(1, 21):
            began = time.perf_counter()
            bus.publish(finished(letter(ident)))
            publish_took.append(time.perf_counter() - began)
        await settle(lambda: len(sender.delivered) == 20)
        await notifier.close()

    asyncio.run(main())
    assert all(url.endswith("fine") for url, _, _ in sender.delivered)
    assert max(publish_took) < 0.05
    # What the hanging one did not take stays in the outbox for the next start.
    box = Outbox(tmp_path / "state" / "notify")
    box.open()
    assert len(box.pending) == 20


def test_what_a_restart_finds_in_the_outbox_is_sent_and_a_replayed_cause_is_not_queued_again(
    tmp_path: Path,
) -> None:
    config = config_for(tmp_path, everything())
    down = FakeSender(lambda *a: "connection refused")
    up = FakeSender()

    async def first() -> None:
        bus = StateBus()
        notifier = Notifier(config, bus, sender=down, backoff_base=10)
        notifier.start()
        bus.publish(finished(letter(1)))
        bus.publish(changed(AgentState.THROTTLED, reason="budget"))
        await settle(lambda: len(down.attempts) == 1)
        await notifier.close()

    async def second() -> None:
        bus = StateBus()
        notifier = Notifier(config, bus, sender=up)
        notifier.start()
        bus.publish(ConfigApplied(config=config))
        bus.publish(finished(letter(1)))  # e.g. a journal replayed: the same cause
        bus.publish(changed(AgentState.THROTTLED, old=AgentState.IDLE, reason="budget"))
        await settle(lambda: len(up.delivered) == 2)
        await asyncio.sleep(0.05)
        await notifier.close()

    asyncio.run(first())
    asyncio.run(second())
    assert sorted(title for _, title, _ in up.delivered) == [
        "ghit-work: codex is throttled",
        "ghit-work: dead letter 1 (codex)",
    ]


def test_a_removed_target_drops_its_entries_and_an_edited_one_takes_them(tmp_path: Path) -> None:
    down = FakeSender(lambda *a: "down")
    up = FakeSender()

    async def run(config: Config, sender: FakeSender, publish: list[Change]) -> list[Notice]:
        bus = StateBus()
        lines: list[Notice] = []
        bus.changes.subscribe(lambda c: lines.append(c) if isinstance(c, Notice) else None)
        notifier = Notifier(config, bus, sender=sender, backoff_base=10)
        notifier.start()
        for change in publish:
            bus.publish(change)
        await asyncio.sleep(0.1)
        await notifier.close()
        return lines

    asyncio.run(
        run(
            config_for(tmp_path, everything("json://a/1"), everything("json://b/1")),
            down,
            [finished(letter(1))],
        )
    )
    lines = asyncio.run(run(config_for(tmp_path, everything("json://a/2")), up, []))
    assert [url for url, _, _ in up.delivered] == ["json://a/2"]
    assert any(
        "dropped 1 notification(s) for [[notify]] tables no longer configured" in n.message
        for n in lines
    )


def test_a_target_for_some_agents_gets_theirs_and_the_stream_s(tmp_path: Path) -> None:
    note = Notification(cause="stream-failing", key="s", agent=None, title="t", body="b")
    only = Notify(URL, frozenset({"stream-failing", "dead-letter"}), frozenset({"claude"}))
    assert only.wants(note.cause, note.agent)
    assert not only.wants("dead-letter", "codex")


@pytest.mark.parametrize("missing", [True, False])
def test_check_says_when_notify_is_configured_but_apprise_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: bool
) -> None:
    from ghitwork.app import checks

    monkeypatch.setattr(send, "available", lambda: not missing)
    config = config_for(tmp_path, everything())
    problems = [str(p) for p in checks.notify_problems(config)]
    if missing:
        assert problems == [
            f"{config.path}: notify: [[notify]] is configured but apprise is not installed: "
            "pip install 'ghit-work[notify]'"
        ]
    else:
        assert problems == []
    assert checks.notify_problems(config_for(tmp_path)) == []


def test_the_sender_process_delivers_reports_failures_and_outlives_its_worker(
    tmp_path: Path,
) -> None:
    """The real worker (`python -m ghitwork.notify.send`), to a receiver on 127.0.0.1 that
    answers 200, 500, or nothing."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[dict[str, Any]] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/hang":
                release.wait(30)
                return
            got.append(body)
            self.send_response(500 if self.path == "/fail" else 200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"json://127.0.0.1:{server.server_address[1]}"

    async def main() -> list[tuple[bool, str]]:
        sender = Sender(timeout=2.0)
        sender.warm([f"{base}/ok"])
        hanging = sender.start(f"{base}/hang", "h", "waits", "info")
        answers = [
            await sender.start(f"{base}/ok", "ghit-work: t", "line 1\nline 2", "failure"),
            await sender.start(f"{base}/fail", "t", "b", "info"),
            await sender.start("nosuchservice://x", "t", "b", "info"),
        ]
        assert not hanging.done()  # the others went on meanwhile
        process = sender._process
        assert process is not None
        process.kill()  # a worker that dies fails what it had under way...
        answers.append(await asyncio.wait_for(hanging, 5))
        # ... and the next send starts another
        answers.append(await sender.start(f"{base}/ok", "again", "b", "info"))
        await sender.close()
        return answers

    try:
        answers = asyncio.run(main())
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert answers[0] == (True, "")
    assert answers[1][0] is False and "error=500" in answers[1][1]
    assert answers[2] == (False, "ValueError: " + send.UNUSABLE)
    assert answers[3] == (False, "the notification sender process exited (-9)")
    assert answers[4] == (True, "")
    assert got[0] == {
        "version": "1.0",
        "title": "ghit-work: t",
        "message": "line 1\nline 2",
        "attachments": [],
        "type": "failure",
    }
