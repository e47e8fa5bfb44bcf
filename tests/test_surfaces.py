"""SPEC §11 on every surface: the same current queue lengths, and one redactor.

Through the real command: `status`, `status --json`, status.json, `/api/v1/state`, `/metrics`,
the page, the status lines and the TUI (in tmux). In-process: the Redactor.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import GHIT_WORK, Running, Setup, event, ghit_work, poll, write_events
from prometheus_client.parser import text_string_to_metric_families

from ghitwork.bus.changes import Level, Notice
from ghitwork.config.model import AgentConfig, Config, secret_values
from ghitwork.config.prompt import default
from ghitwork.flow.dispatch import Dispatcher
from ghitwork.model.redact import Redactor
from ghitwork.observe.dashboard import DashboardModel
from ghitwork.observe.status import StatusWriter

# -- the Redactor, in-process


def stream(redactor: Redactor, chunks: list[bytes]) -> bytes:
    one = redactor.stream()
    return b"".join(one.feed(chunk) for chunk in chunks) + one.flush()


def test_a_secret_split_across_chunks_at_any_point_is_redacted() -> None:
    secret = b"sk-live-0123456789"
    data = b"key " + secret + b" and again " + secret + b" end"
    redactor = Redactor([secret.decode()])
    for cut in range(1, len(data)):
        for second in range(cut, len(data)):
            out = stream(redactor, [data[:cut], data[cut:second], data[second:]])
            assert out == b"key *** and again *** end", (cut, second)


def test_what_cannot_be_a_secret_is_passed_on_at_once() -> None:
    redactor = Redactor(["sk-live-0123456789"]).stream()
    assert redactor.feed(b"hello world\n") == b"hello world\n"
    assert redactor.feed(b"almost sk-li") == b"almost "  # may be the start of the secret
    assert redactor.feed(b"ght\n") == b"sk-light\n"
    assert redactor.flush() == b""


def test_overlapping_secrets_are_masked_whole_longest_first() -> None:
    short, longer = "sk-abcd", "sk-abcdefgh"
    redactor = Redactor([short, longer])
    assert redactor.text(f"a {longer} b {short} c") == "a *** b *** c"
    # One begins inside the other: nothing of either shows.
    both = Redactor([short, "cdefgh-tail-99"])
    assert both.text("x sk-abcdefgh-tail-99 y") == "x *** y"
    assert stream(both, [b"x sk-abcd", b"efgh-tail-99 y"]) == b"x *** y"
    assert stream(Redactor([short, longer]), [b"a sk-abc", b"defgh b"]) == b"a *** b"
    assert stream(Redactor([short, longer]), [b"a sk-abcd", b" b"]) == b"a *** b"


def test_empty_and_short_secrets_are_ignored() -> None:
    redactor = Redactor(["", "a", "abc"])
    assert redactor.secrets == ()
    assert redactor.text("a abc abcd") == "a abc abcd"
    assert stream(redactor, [b"a abc", b" abcd"]) == b"a abc abcd"
    assert Redactor(["abcd"]).text("xabcdx") == "x***x"


def test_a_secret_is_also_redacted_as_it_appears_in_json() -> None:
    secret = 'pa"ss\\word'
    line = json.dumps({"message": f"login {secret}"})
    assert secret not in json.loads(Redactor([secret]).text(line))["message"]


def test_what_an_agent_printed_reaches_a_status_line_as_one_line_of_text() -> None:
    """A NUL, a carriage return, a newline or a terminal's escape sequence in what a line
    quotes (an agent's output, its session id) is written `\\xNN` in the text lines and the
    TUI's panes: grep and a terminal take each line as it is. JSON lines keep it exact."""
    printed = "session: ab\x00cd\r\x1b[2J\nnext\tend \u00e9"
    escaped = "session: ab\\x00cd\\x0d\\x1b[2J\\x0anext\tend \u00e9"
    change = Notice(level=Level.WARNING, topic="run", message=printed, agent="a")
    text, as_json = io.StringIO(), io.StringIO()
    StatusWriter(text)(change)
    StatusWriter(as_json, json_format=True)(change)
    model = DashboardModel()
    model(change)
    assert text.getvalue().count("\n") == 1 and escaped in text.getvalue()
    assert all(ch.isprintable() or ch in "\t\n" for ch in text.getvalue())
    assert json.loads(as_json.getvalue())["message"] == f"agent a: {printed}"
    view = model.view()
    assert view.log[-1].endswith(escaped) and view.attention[-1].endswith(escaped)


def test_the_shared_redactor_follows_each_reload() -> None:
    """The dispatcher refreshes the one redactor every surface shares (cli.py makes it) at
    each reload, before the reload's ConfigApplied reaches them."""

    def config(env: dict[str, str]) -> Config:
        agent = AgentConfig(
            name="a",
            cmd=("true",),
            username="a",
            event_scopes=("team:ghit",),
            event_kinds=("reply-created",),
            workdir=Path("."),
            prompt=default(),
            env=env,
        )
        return Config(path=Path("x.toml"), agents=(agent,))

    environ = {"GHIT_API_TOKEN": "ghp-token-1234"}
    first = config({})
    redactor = Redactor(secret_values(environ, first))
    dispatcher = Dispatcher(first, lambda change: None, environ, redactor=redactor)
    assert redactor.text("ghp-token-1234 sk-new-key-5678") == "*** sk-new-key-5678"
    generation = redactor.generation
    dispatcher.reload(config({"OPENAI_API_KEY": "sk-new-key-5678"}))
    assert redactor.text("ghp-token-1234 sk-new-key-5678") == "*** ***"
    assert redactor.generation > generation


# -- through the real command

BLOCKING_AGENT = """\
import json, os, sys, time
ids = sys.stdin.read().split()
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"agent": os.environ["GHIT_WORK_AGENT"], "ids": ids,
                        "argv": sys.argv[1:]}) + "\\n")
if set(ids) & set(os.environ.get("FAIL_IDS", "").split()):
    sys.exit(1)
print("session sess-" + os.environ.get("SESSION", "none"), flush=True)
block = os.environ.get("BLOCK_IDS")  # unset: every run waits for the release file
if block is None or set(ids) & set(block.split()):
    while not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.02)
"""


def http_address(daemon: Running) -> str:
    text = daemon.wait_for("http: serving on ")
    found = re.search(r"http: serving on (http://[\d.]+:\d+)", text)
    assert found, text
    return found.group(1)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        body: bytes = answer.read()
    return body.decode()


def queue_lengths(base: str) -> dict[str, float]:
    return {
        sample.labels["agent"]: sample.value
        for family in text_string_to_metric_families(fetch(f"{base}/metrics"))
        for sample in family.samples
        if sample.name == "ghitwork_queue_length"
    }


class Surfaces:
    """What every surface says, read at once: `status`, `status --json`, status.json, the API
    (and `/metrics`, `/`, the status lines)."""

    def __init__(self, setup: Setup, daemon: Running, base: str) -> None:
        self.setup, self.daemon, self.base = setup, daemon, base
        self.text = ""
        self.snapshots: dict[str, dict[str, Any]] = {}

    def read(self) -> Surfaces:
        status = ghit_work("status", cwd=self.setup.path)
        as_json = ghit_work("status", "--json", cwd=self.setup.path)
        assert status.returncode == 0 and as_json.returncode == 0, status.stderr
        self.text = status.stdout
        file = self.setup.path / ".ghit-work" / "status.json"
        self.snapshots = {
            "status --json": json.loads(as_json.stdout),
            "status.json": json.loads(file.read_text()),
            "/api/v1/state": json.loads(fetch(f"{self.base}/api/v1/state")),
        }
        return self

    def agents(self, field: str) -> dict[str, set[Any]]:
        """Each agent's `field` as the JSON surfaces show it (one value when they agree)."""
        found: dict[str, set[Any]] = {}
        for snapshot in self.snapshots.values():
            for agent in snapshot["agents"]:
                value = agent[field]
                found.setdefault(agent["name"], set()).add(
                    tuple(value) if isinstance(value, list) else value
                )
        return found

    def everything(self) -> str:
        return "\n".join(
            [
                self.text,
                *map(json.dumps, self.snapshots.values()),
                fetch(f"{self.base}/metrics"),
                fetch(f"{self.base}/"),
                self.daemon.text,
            ]
        )


def test_every_surface_shows_the_queue_the_moment_events_wait(setup: Setup) -> None:
    """Issue 21 #9: agent a works on [2] while event 3 arrives and dead letter 1 is handed
    back; agent b waits for a slot (limit 1) with event 4. Every surface says queue 2 for a
    (as /metrics does), not 0 until a's next state change."""
    setup.agent_py.write_text(BLOCKING_AGENT)
    release = setup.path / "release"
    env = {"RECORD": str(setup.records), "RELEASE": str(release)}
    setup.write_config(
        {
            "a": {"env": {**env, "FAIL_IDS": "1"}, "run_attempts": 1},
            "b": {"env": env, "event_kinds": ["pull-created"]},
        },
        tail=["--follow"],
        http="127.0.0.1:0",
        limit=1,
    )
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        base = http_address(daemon)
        daemon.wait_for("dead letter 1 (")
        write_events(setup.events, [event(2)])
        daemon.wait_for("batch of 1 event [2]")
        assert ghit_work("redeliver", "1", cwd=setup.path).returncode == 0
        daemon.wait_for("handed back to a")
        write_events(setup.events, [event(3), event(4, kind="pull-created")])
        surfaces = Surfaces(setup, daemon, base)

        def all_agree() -> bool:
            surfaces.read()
            return (
                queue_lengths(base) == {"a": 2.0, "b": 1.0}
                and surfaces.agents("queue") == {"a": {2}, "b": {1}}
                and surfaces.agents("state") == {"a": {"working"}, "b": {"queued"}}
                and surfaces.agents("batch") == {"a": {(2,)}, "b": {()}}
                and "working       queue 2  batch [2]" in surfaces.text
                and "queued        queue 1" in surfaces.text
            )

        try:
            poll(all_agree, 15, "every surface to show a's queue 2 and b's queue 1")
        except AssertionError:
            raise AssertionError(f"{surfaces.text}\n{surfaces.agents('queue')}") from None
        release.touch()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


KEY = "sk-test-4f9a2b7c"  # agent a's API_KEY, and in its session id
NEW = "tok-added-8e1d5a30"  # a secret only from the reload on


def test_one_redactor_on_every_surface_refreshed_at_reload(setup: Setup) -> None:
    """Issue 21 #10: a session id holding an agent's key (`sess-sk-…`) and a `problem` holding
    it show `***` on every surface; a reload that makes another value a secret (in another
    agent's env) redacts it from then on; the session id is still resumed as it is."""
    setup.agent_py.write_text(BLOCKING_AGENT)
    release = setup.path / "release"
    release.touch()  # a's runs end at once
    missing = setup.path / KEY / "agent"  # b cannot start: the error names the key

    def configure(session: str, extra: dict[str, dict[str, Any]]) -> None:
        setup.write_config(
            {
                "a": {
                    "env": {
                        "RECORD": str(setup.records),
                        "RELEASE": str(release),
                        "API_KEY": KEY,
                        "SESSION": session,
                    },
                    "session_id_pattern": r"session (sess-\S+)",
                    "resume_cmd": [*setup.agent_cmd(), "--resume", "{session_id}"],
                },
                "b": {"cmd": [str(missing)], "event_kinds": ["pull-created"], "run_attempts": 1},
                **extra,
            },
            tail=["--follow"],
            http="127.0.0.1:0",
        )

    configure(KEY, {})
    write_events(setup.events, [event(1), event(2, kind="pull-created")])
    with Running(setup.path) as daemon:
        base = http_address(daemon)
        daemon.wait_for("dead letter 1 (")
        daemon.wait_for("agent a: working -> idle")
        surfaces = Surfaces(setup, daemon, base)

        def shown(runs: int) -> bool:
            """Every surface once it has a's `runs` runs: its session id redacted."""
            surfaces.read()
            return (
                surfaces.agents("session_id")["a"] == {"sess-***"}
                and all(
                    len(agent["runs"]) == runs
                    for snapshot in surfaces.snapshots.values()
                    for agent in snapshot["agents"]
                    if agent["name"] == "a"
                )
                and "session sess-***" in surfaces.text
            )

        poll(lambda: shown(1), 15, "a's session id, redacted, on every surface")
        assert surfaces.agents("problem")["b"] == {f"command not found: {setup.path}/***/agent"}
        assert KEY not in surfaces.everything()
        letters = ghit_work("dead-letters", "--json", cwd=setup.path).stdout
        assert '"agent": "b"' in letters and KEY not in letters, letters
        # A reload: a's next session id holds NEW, which only agent c's env makes a secret.
        configure(NEW, {"c": {"env": {"OTHER_TOKEN": NEW}, "event_kinds": ["push"]}})
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("config reloaded")
        write_events(setup.events, [event(3)])
        daemon.wait_for("agent a: working -> idle", count=2)
        write_events(setup.events, [event(4)])
        daemon.wait_for("agent a: working -> idle", count=3)
        poll(lambda: shown(3), 15, "a's new session id, redacted")
        assert daemon.text.count("resuming session sess-***") == 2
        everything = surfaces.everything()
        assert KEY not in everything and NEW not in everything
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    resumed = [run["argv"] for run in setup.runs() if run["agent"] == "a"]
    expected = [[], ["--resume", f"sess-{KEY}"], ["--resume", f"sess-{NEW}"]]
    assert resumed == expected, "resumed with the session id as it is"


class Tmux:
    """A terminal for the real `ghit-work --tui` (as in test_tui_tmux.py)."""

    def __init__(self, cwd: Path) -> None:
        self.socket = f"ghit-work-surfaces-{os.getpid()}-{id(self)}"
        self.run("new-session", "-d", "-s", "t", "-x", "120", "-y", "30", "-c", str(cwd), "sh")
        self.run("set-option", "-t", "t", "status", "off")

    def run(self, *args: str) -> str:
        command = ["tmux", "-L", self.socket, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "t", *keys)

    def wait_for(self, *texts: str) -> str:
        def found() -> str:
            screen = self.run("capture-pane", "-p", "-t", "t")
            return screen if all(text in screen for text in texts) else ""

        try:
            return poll(found, 20, f"{texts} on the screen")
        except AssertionError:
            raise AssertionError(self.run("capture-pane", "-p", "-t", "t")) from None

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.mark.skipif(
    shutil.which("tmux") is None and not os.environ.get("CI"),
    reason="tmux is not installed (.ci/run installs it)",
)
def test_the_tui_shows_the_current_queue_and_a_redacted_session(setup: Setup) -> None:
    """Issue 21 #9 and #10 in the TUI: the strip and the expanded view of an agent working on
    [2] show the 2 events that wait, and its session id holding its key as `sess-***`."""
    setup.agent_py.write_text(BLOCKING_AGENT)
    release = setup.path / "release"
    env = {"RECORD": str(setup.records), "RELEASE": str(release), "API_KEY": KEY}
    settings = {
        "env": {**env, "SESSION": KEY, "BLOCK_IDS": "2"},
        "session_id_pattern": r"session (sess-\S+)",
        "resume_cmd": [*setup.agent_cmd(), "--resume", "{session_id}"],
    }
    setup.write_config({"a": settings}, tail=["--follow"])
    write_events(setup.events, [event(1)])
    tmux = Tmux(setup.path)
    try:
        tmux.keys("-l", f"{shlex.join([GHIT_WORK, '--tui'])}; echo EXITED=$?")
        tmux.keys("Enter")
        tmux.wait_for("batches 1", " a idle")
        write_events(setup.events, [event(2)])
        tmux.wait_for(" a working")
        write_events(setup.events, [event(3), event(4)])
        screen = tmux.wait_for(" +2")
        assert re.search(r" a working \S+ \+2\b", screen), screen
        tmux.keys("Enter")
        screen = tmux.wait_for("2 event(s) queued", "session:  sess-***")
        assert re.search(r"a: working for \S+, 2 event\(s\) queued", screen), screen
        assert KEY not in screen
        release.touch()
        tmux.keys("q")
        tmux.wait_for("EXITED=0")
    finally:
        tmux.kill()
