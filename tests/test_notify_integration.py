"""Notifications (SPEC §13) through the real command, to real receivers on 127.0.0.1: a
webhook (`json://`) and a mail server (`mailto://`, aiosmtpd). The outbox across kill -9 (none
lost, none doubled), a receiver that hangs or answers 500 (dispatch goes on), the causes the
flow makes (dead letter, needs-input, pause, throttle, the stream), secrets redacted."""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from conftest import Running, Setup, event, ghit_work, poll, with_commands, write_events

SECRET = "sk-test-4f9a2c7e1b8d"  # an agent's API key, which it prints when it fails

FAILING = """\
import os, sys
sys.stdin.read()
print("starting")
print(f"error: the API refused key {os.environ['OPENAI_API_KEY']}", file=sys.stderr)
sys.exit(1)
"""


class Receiver:
    """A webhook receiver: each POST's JSON body, in order. `mode`: `ok` (200), `fail`
    (500) or `hang` (answers nothing until released)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.attempts += 1
                if receiver.mode == "hang":
                    receiver.release.wait(60)
                    return
                if receiver.mode == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(data))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"json://127.0.0.1:{self.port}{path}"

    def titles(self) -> list[str]:
        return [body["title"] for body in self.bodies]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


class Mailbox:
    """An SMTP server on 127.0.0.1 (aiosmtpd): each message as received."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        mailbox = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                mailbox.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                message = email.message_from_bytes(envelope.content, policy=email.policy.default)
                mailbox.messages.append(message)
                return "250 OK"

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def url(self) -> str:
        return (
            f"mailto://127.0.0.1:{self.port}?mode=insecure&from=alerts@mail.test&to=ops@mail.test"
        )


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    found = Mailbox()
    yield found
    found.controller.stop()


Table = tuple[str, list[str]] | tuple[str, list[str], list[str]]  # url, on (, agents)


def notify_tables(*tables: Table) -> str:
    text = ""
    for url, on, *agents in tables:
        text += f"\n[[notify]]\nurl = {json.dumps(url)}\non = {json.dumps(on)}\n"
        if agents:
            text += f"agents = {json.dumps(agents[0])}\n"
    return text


def with_notify(setup: Setup, *tables: Table) -> None:
    setup.config.write_text(setup.config.read_text() + notify_tables(*tables))


def outbox(setup: Setup) -> list[dict[str, Any]]:
    path = setup.path / ".ghit-work" / "notify" / "outbox.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pending(setup: Setup) -> list[str]:
    """The keys the outbox holds, not yet delivered (what a restart sends)."""
    adds: dict[int, str] = {}
    for record in outbox(setup):
        if "add" in record:
            adds[record["add"]["id"]] = record["add"]["key"]
        elif "done" in record:
            adds.pop(record["done"], None)
    return sorted(adds.values())


def failing_agent(setup: Setup, **settings: Any) -> dict[str, Any]:
    script = setup.path / "failing.py"
    script.write_text(FAILING)
    return {
        "cmd": [sys.executable, str(script)],
        "run_attempts": 1,
        "env": {"RECORD": str(setup.records), "OPENAI_API_KEY": SECRET},
        **settings,
    }


def test_a_dead_letter_reaches_a_webhook_and_a_mailbox_redacted(
    setup: Setup, receiver: Receiver, mailbox: Mailbox
) -> None:
    setup.write_config({"codex": failing_agent(setup)}, tail=["--follow"])
    with_notify(setup, (receiver.url(), ["dead-letter"]), (mailbox.url(), ["dead-letter"]))
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(101), event(102)])
        daemon.wait_for("dead letter 1")
        poll(lambda: receiver.bodies and mailbox.messages, what="both notifications")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    [body] = receiver.bodies
    assert body["title"] == "ghit-work: dead letter 1 (codex)"
    assert body["type"] == "failure" and body["version"] == "1.0"
    lines = body["message"].splitlines()
    assert lines[0] == (
        "codex's batch became dead letter 1 after 1 attempt: exit 1. "
        "Its last line on stderr: error: the API refused key ***"
    )
    assert lines[2:6] == [
        "agent: codex",
        "conversation: (the agent's own)",
        "events: 101-102",
        "thread: https://ghit.example/teams/ghit/ghit/threads/101",
    ]
    assert "  event 102: https://ghit.example/teams/ghit/ghit/threads/102" in lines
    assert (
        lines[-1]
        == "See it with `ghit-work dead-letters`; hand it back with `ghit-work redeliver 1`."
    )
    [message] = mailbox.messages
    assert message["Subject"] == "ghit-work: dead letter 1 (codex)"
    assert mailbox.envelopes == [("alerts@mail.test", ["ops@mail.test"])]
    text = message.get_content()
    assert text.strip().splitlines() == body["message"].splitlines()
    # The secret is nowhere: not in what was sent, not in the outbox, not on stderr.
    assert SECRET not in json.dumps(receiver.bodies) + text
    assert SECRET not in (setup.path / ".ghit-work" / "notify" / "outbox.jsonl").read_text()
    assert SECRET not in daemon.text
    assert pending(setup) == []
    print("\n--- as the webhook received it:\n" + json.dumps(body, indent=2))
    print("--- as the mail server received it:\n" + message.as_string())


def test_the_outbox_survives_kill_9_none_lost_none_doubled(setup: Setup) -> None:
    threads = [f"thread:teams/ghit/ghit/{n}" for n in range(1, 6)]
    down = Receiver("fail")
    up = Receiver("ok")
    try:
        agent = failing_agent(setup, conversations="thread", concurrency=5)
        setup.write_config({"codex": agent}, tail=["--follow"])
        plain = setup.config.read_text()
        with_notify(setup, (down.url(), ["dead-letter"]))
        with Running(setup.path) as daemon:
            write_events(setup.events, [event(n, scopes=[t]) for n, t in enumerate(threads, 1)])
            poll(lambda: len(pending(setup)) == 5, what="five notifications in the outbox")
            poll(lambda: down.attempts >= 1, what="a failed send")
            daemon.process.kill()  # kill -9: nothing flushed, nothing closed
            daemon.process.wait()
        assert down.bodies == []
        # The receiver is fixed (a URL edited in place: the same [[notify]] table).
        setup.config.write_text(plain + notify_tables((up.url(), ["dead-letter"])))
        with Running(setup.path) as daemon:
            daemon.wait_for("5 notification(s) left in the outbox by the last run")
            poll(lambda: len(up.bodies) == 5, what="the five, sent at the next start")
            poll(lambda: pending(setup) == [], what="the outbox emptied")
            daemon.process.kill()
            daemon.process.wait()
        # Started again (after kill -9 again): the dead letters are shown again at start,
        # and none of them is notified twice.
        with Running(setup.path) as daemon:
            write_events(setup.events, [event(6, scopes=[threads[0]])])
            daemon.wait_for("dead letter 6")
            poll(lambda: len(up.bodies) == 6, what="the sixth")
            time.sleep(0.5)
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0
        titles = sorted(up.titles())
        assert titles == [f"ghit-work: dead letter {n} (codex)" for n in range(1, 7)]
    finally:
        down.close()
        up.close()


@pytest.mark.parametrize("mode", ["hang", "fail"])
def test_a_receiver_that_hangs_or_fails_never_delays_dispatch(setup: Setup, mode: str) -> None:
    bad = Receiver(mode)
    try:
        agents = {"codex": failing_agent(setup), "claude": {}}
        setup.write_config(agents, tail=["--follow"])
        with_notify(setup, (bad.url(), ["dead-letter", "internal-error"]))
        with Running(setup.path) as daemon:
            write_events(setup.events, [event(1)])
            daemon.wait_for("dead letter 1")
            poll(lambda: bad.attempts >= 1, what="the receiver's first request")
            # The notifier waits on its receiver; every event still reaches claude at once.
            for ident in range(2, 12):
                written = time.time()
                write_events(setup.events, [event(ident)])
                poll(lambda: ident in setup.delivered("claude"), 5, f"event {ident}")  # noqa: B023
                start = [r["start"] for r in setup.runs() if str(ident) in r["prompt"].split()]
                assert start[0] - written < 1.0, f"event {ident} waited {start[0] - written:.3f}s"
            daemon.signal(signal.SIGTERM)
            began = time.monotonic()
            assert daemon.wait() == 0
            assert time.monotonic() - began < 5.0  # the stop does not wait for the receiver
        assert bad.bodies == []
        if mode == "fail":
            assert "notify: cannot send to notify[0] (json://): " in daemon.text
        assert pending(setup) != []  # kept for the next start
    finally:
        bad.close()


def test_needs_input_and_a_pause_notify_once_even_across_a_restart(
    setup: Setup, receiver: Receiver
) -> None:
    script = setup.path / "asking.py"
    script.write_text(
        f"import sys\nsys.stdin.read()\nprint('NEEDS INPUT: which branch? (my key is {SECRET})')\n"
    )
    setup.write_config(
        {
            "codex": {
                "cmd": [sys.executable, str(script)],
                "needs_input_pattern": r"NEEDS INPUT: (?P<question>.*)",
                "env": {"OPENAI_API_KEY": SECRET},
            },
        },
        tail=["--follow"],
    )
    with_notify(setup, (receiver.url(), ["needs-input", "paused"]))
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(7)])
        daemon.wait_for("agent codex: working -> needs-input")
        poll(lambda: len(receiver.bodies) == 1, what="the needs-input notification")
        assert ghit_work("pause", "codex", "--reason", "deploying", cwd=setup.path).returncode == 0
        poll(lambda: len(receiver.bodies) == 2, what="the pause's")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    asks, paused = receiver.bodies
    assert asks["title"] == "ghit-work: codex needs input"
    assert asks["type"] == "warning"
    lines = asks["message"].splitlines()
    assert lines[0] == (
        "codex needs a human: its run ended asking for input. It asks: which branch? "
        "(my key is ***)"
    )
    assert "events: 7" in lines
    assert "thread: https://ghit.example/teams/ghit/ghit/threads/7" in lines
    assert lines[-1].endswith("Or wake it by hand: ghit-work resume codex")
    assert paused["title"] == "ghit-work: codex is paused"
    assert paused["message"].splitlines()[0] == (
        "codex was paused by ghit-work pause until resumed (deploying). No run starts; its "
        "events keep queueing."
    )
    # Still paused, still waiting for a human after a restart: neither is news again.
    with Running(setup.path) as daemon:
        daemon.wait_for("(kept from before the restart)")
        daemon.wait_for("agent codex: idle -> needs-input")
        time.sleep(1.0)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert len(receiver.bodies) == 2


def test_an_agent_over_its_budget_notifies_throttled_once(setup: Setup, receiver: Receiver) -> None:
    setup.write_config({"codex": {"budget": "1/1h"}}, tail=["--follow"])
    with_notify(setup, (receiver.url(), ["throttled"], ["codex"]))
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1)])
        poll(lambda: setup.delivered("codex") == [1], what="the first run")
        daemon.wait_for("agent codex: working -> idle")
        write_events(setup.events, [event(2)])
        daemon.wait_for("-> throttled")
        write_events(setup.events, [event(3)])
        poll(lambda: len(receiver.bodies) == 1, what="the throttled notification")
        time.sleep(0.5)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    [body] = receiver.bodies
    assert body["title"] == "ghit-work: codex is throttled"
    assert body["message"].startswith("codex is throttled: ")
    assert "agent: codex" in body["message"]
    assert "\nevents: 2\n" in body["message"], body["message"]  # the one it holds back
    assert "\nthread: https://" in body["message"], body["message"]


def test_a_stream_given_up_notifies_failing_and_its_return_healthy(
    setup: Setup, receiver: Receiver
) -> None:
    setup.write_config({"codex": {}}, tail=["--fail-at-start"], retry="1s")
    with_notify(setup, (receiver.url(), ["stream-failing", "stream-healthy"]))
    done = ghit_work(cwd=setup.path)
    assert done.returncode == 3, done.stderr
    poll(lambda: len(receiver.bodies) == 1 or pending(setup), what="stream-failing")
    if not receiver.bodies:  # not sent before the exit: the next start sends it
        assert pending(setup)[0].startswith("stream-failing:")
    config = setup.config.read_text().replace(', "--fail-at-start"', ', "--follow"')
    setup.config.write_text(config)
    with Running(setup.path) as daemon:
        write_events(setup.events, [event(1)])
        poll(lambda: len(receiver.bodies) == 2, what="stream-healthy")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    failing, healthy = receiver.bodies
    assert failing["title"] == "ghit-work: the event stream is failing"
    assert failing["message"].startswith("ghit-work gave up on the event stream: gave up: ")
    assert failing["type"] == "failure"
    assert healthy["title"] == "ghit-work: the event stream is healthy again"
    assert healthy["message"].startswith(
        "The event stream (tail-events) is healthy again: it reads events again, after "
    )
    assert healthy["type"] == "success"


def test_check_refuses_notify_without_apprise_and_a_start_warns(
    setup: Setup, receiver: Receiver, tmp_path: Path
) -> None:
    setup.write_config({"codex": {}}, tail=["--follow"])
    with_notify(setup, (receiver.url(), ["dead-letter"]))
    assert ghit_work("check", cwd=setup.path).returncode == 0
    hidden = tmp_path / "no-apprise"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text("import sys\nsys.modules['apprise'] = None\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hidden), env.get("PYTHONPATH")]))
    result = ghit_work("check", cwd=setup.path, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"ghit-work: error: {setup.config.name}: notify: [[notify]] is configured but apprise "
        "is not installed: pip install 'ghit-work[notify]'"
    ]
    with Running(setup.path, "--log-level", "warning", env=env) as daemon:
        daemon.wait_for(
            "apprise is not installed: pip install 'ghit-work[notify]'; notifications wait in "
            "the outbox until it is installed"
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_check_names_a_url_apprise_cannot_use(setup: Setup) -> None:
    setup.write_config({"codex": {}})
    with_notify(setup, ("nosuchservice://somewhere", ["dead-letter"]))
    result = ghit_work("check", cwd=setup.path, env=with_commands(setup.path))
    assert result.returncode == 2
    assert (
        f"{setup.config.name}: notify[0].url: apprise cannot use this URL (an unknown "
        "schema, or a part missing)"
    ) in result.stderr
