"""Failure containment (SPEC §11): one run's fault is that run's result; what cannot be
contained stops ghit-work with exit 4, losing nothing; a stop always ends; a config the OS
would refuse at spawn is refused at load."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    GHIT_WORK,
    Running,
    Setup,
    end_leftovers,
    event,
    fill,
    ghit_work,
    poll,
    write_events,
)

from ghitwork.app.daemon import Daemon, Exit
from ghitwork.bus.changes import Change, Level, RunFinished, StateBus
from ghitwork.config.load import load_config
from ghitwork.flow.routing import Matcher
from ghitwork.model import usage
from ghitwork.model.events import Decoder
from ghitwork.observe.status import StatusWriter
from ghitwork.persist.store import Store
from ghitwork.run.archive import LogFiles
from ghitwork.run.output import Stream
from ghitwork.system.process import Child

# -- a config the OS would refuse at spawn is refused when it is loaded


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"cmd": ["sh", "-c", "echo a\u0000b"]}, "agents.a.cmd[2]"),
        ({"env": {"X": "a\u0000b"}}, "agents.a.env.X"),
        ({"env": {'"A=B"': "x"}}, "agents.a.env"),
        ({"workdir": "wo\u0000rk"}, "agents.a.workdir"),
        (
            {"resume_cmd": ["x", "\u0000{session_id}"], "session_id_pattern": "s: (\\S+)"},
            "agents.a.resume_cmd[1]",
        ),
    ],
)
def test_check_refuses_what_the_os_would_refuse_at_spawn(
    setup: Setup, settings: dict[str, Any], key: str
) -> None:
    setup.write_config({"a": settings})
    result = ghit_work("check", cwd=setup.path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"ghit-work: error: ghit-work.toml: {key}: "), line


def test_a_reload_with_a_nul_byte_keeps_the_old_config(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--follow"])
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(lambda: setup.delivered("a") == [1], what="event 1")
        setup.write_config({"a": {"env": {"RECORD": str(setup.records), "X": "a\u0000b"}}})
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("config not reloaded, the old one stays in force")
        assert "agents.a.env.X: contains a NUL byte" in daemon.text
        write_events(setup.events, [event(2)])
        poll(lambda: setup.delivered("a") == [1, 2], what="event 2 under the old config")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


# -- one run's fault is that run's result, through the real command

SESSION_AGENT = """\
import json, os, sys
prompt = sys.stdin.read()
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"agent": os.environ["GHIT_WORK_AGENT"], "prompt": prompt,
                        "argv": sys.argv[1:]}) + "\\n")
sys.stdout.write("session: ab\\0cd\\n")  # a session id the OS refuses in an argv
"""


def test_a_run_the_os_refuses_fails_alone_and_its_retry_succeeds(setup: Setup) -> None:
    """A session id with a NUL byte (printed by the agent, so no config check can see it)
    makes the resumed run's argv one the OS refuses: that run fails with outcome `error`,
    the other agent goes on, and the retry starts a fresh session and delivers."""
    script = setup.path / "session_agent.py"
    script.write_text(SESSION_AGENT)
    setup.write_config(
        {
            "a": {
                "cmd": [sys.executable, str(script)],
                "resume_cmd": [sys.executable, str(script), "--resume", "{session_id}"],
                "session_id_pattern": "session: (\\S+)",
                "run_backoff": 0.2,
            },
            "b": {},
        },
        tail=["--follow"],
    )
    write_events(setup.events, [event(1)])
    with Running(setup.path, "--log-format", "json") as daemon:
        poll(lambda: setup.delivered("a") == [1] and setup.delivered("b") == [1], what="1")
        write_events(setup.events, [event(2)])
        daemon.wait_for('"outcome": "error"')
        poll(lambda: setup.delivered("a") == [1, 2], what="a's retry of event 2")
        poll(lambda: setup.delivered("b") == [1, 2], what="b's event 2")
        write_events(setup.events, [event(3)])
        poll(lambda: setup.delivered("b") == [1, 2, 3], what="b goes on")
        lines = [json.loads(line) for line in daemon.text.splitlines()]
        failed = [line for line in lines if line.get("outcome") == "error"]
        assert failed and "embedded null byte" in failed[0]["message"], failed
        assert "embedded null byte" in failed[0]["fault"], "the fault as its own field too"
        assert failed[0]["agent"] == "a" and failed[0]["to"] == "retrying"
        runs = [run for run in setup.runs() if run["agent"] == "a"]
        assert [run["argv"] for run in runs][-1] == [], "the retry starts a fresh session"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert not any(line.get("topic") == "fatal" for line in lines)


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        # an env value past what exec takes (one string over 128 KiB: E2BIG), which no config
        # check can tell from a long one that fits: a value the OS refuses at spawn
        ({"env": {"BIG": "x" * 200_000}}, "Argument list too long"),
        # "an OSError writing its logs": ghit-work's own fault, not an agent that cannot start
        ({"logdir": "afile/sub"}, "cannot write logs in"),
    ],
    ids=["env-the-os-refuses", "logs-that-cannot-be-written"],
)
def test_a_fault_of_ghit_works_own_in_one_run_is_its_error_and_the_rest_go_on(
    setup: Setup, settings: dict[str, object], said: str
) -> None:
    """SPEC §11: the run fails with outcome `error` and the fault's message, is retried,
    then dead-lettered; the other agent goes on, and nothing is fatal."""
    (setup.path / "afile").write_text("")  # a logdir below it cannot be made
    setup.write_config({"a": {**settings, "run_attempts": 2, "run_backoff": 0.1}, "b": {}})
    write_events(setup.events, [event(1)])
    with Running(setup.path, "--log-format", "json") as daemon:
        poll(lambda: setup.delivered("b") == [1], what="b's event 1")
        daemon.wait_for("dead letter 1 (1 event")
        lines = [json.loads(line) for line in daemon.text.splitlines()]
        ended = [line for line in lines if line.get("agent") == "a" and "outcome" in line]
        assert [line["outcome"] for line in ended] == ["error", "error"], ended
        assert all(said in line["fault"] for line in ended), ended
        assert setup.delivered("a") == []
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert not any(line.get("topic") == "fatal" for line in lines)


# -- what cannot be contained: exit 4, 503 at once, nothing lost, through the real command

ROUTING_FAULT = """\
import os
import ghitwork.flow.routing as routing

match = routing.Matcher.match


def failing(self, event):
    if event.id == int(os.environ["FAIL_AT"]):
        raise RuntimeError("injected routing fault")
    return match(self, event)


routing.Matcher.match = failing
"""

SLOW_TO_STOP = """\
import json, os, signal, sys, time
prompt = sys.stdin.read()
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"agent": os.environ["GHIT_WORK_AGENT"], "prompt": prompt}) + "\\n")
if os.environ.get("SLOW"):
    signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.5), sys.exit(0)))
    open(os.environ["SLOW"], "w").close()
    time.sleep(60)
"""


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_routing_fault_is_fatal_exit_4_and_a_restart_delivers_everything(
    setup: Setup,
) -> None:
    """Event 3 cannot be routed: one ERROR line naming the stage, /healthz 503 while the
    agents are being stopped, exit 4; the cursor stays before event 3, so the next start
    delivers it (and everything else) to every agent."""
    plugin = setup.path / "plugin"
    plugin.mkdir()
    (plugin / "sitecustomize.py").write_text(ROUTING_FAULT)
    script = setup.path / "slow_agent.py"
    script.write_text(SLOW_TO_STOP)
    started = setup.path / "slow-started"
    port = _free_port()
    setup.write_config(
        {
            "a": {"cmd": [sys.executable, str(script)]},
            "slow": {
                "cmd": [sys.executable, str(script)],
                "env": {"RECORD": str(setup.records), "SLOW": str(started)},
            },
        },
        tail=["--follow"],
        http=f"127.0.0.1:{port}",
    )
    write_events(setup.events, [event(1), event(2)])
    env = {**os.environ, "PYTHONPATH": str(plugin), "FAIL_AT": "3"}
    with Running(setup.path, env=env) as daemon:
        poll(lambda: setup.delivered("a") == [1, 2], what="a's events 1 and 2")
        poll(started.exists, what="the slow agent to run")
        write_events(setup.events, [event(3), event(4)])
        daemon.wait_for("ERROR   fatal: routing failed (RuntimeError: injected routing fault)")
        assert poll(lambda: _healthz(port) == 503, 5, "503 while stopping")
        assert daemon.wait(timeout=20) == Exit.FATAL
        assert "Traceback" not in daemon.text
    assert 3 not in setup.delivered("a")
    started.unlink()
    setup.write_config(
        {
            "a": {"cmd": [sys.executable, str(script)]},
            "slow": {"cmd": [sys.executable, str(script)]},
        },
        tail=["--follow"],
    )
    with Running(setup.path) as daemon:
        poll(lambda: setup.delivered("a")[-2:] == [3, 4], what="a's events 3, 4 after restart")
        poll(lambda: {3, 4} <= set(setup.delivered("slow")), what="slow's events 3, 4")
        assert {1, 2} <= set(setup.delivered("slow")), "the interrupted batch is redelivered"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


# -- the fault-injection table, in process: each stage, and what becomes of it

Injector = Callable[[pytest.MonkeyPatch, StateBus], None]


class Injected(RuntimeError):
    pass


def _for_agent_a(original: Callable[..., Any], agent_of: Callable[..., str]) -> Any:
    def patched(*args: Any, **kwargs: Any) -> Any:
        if agent_of(*args, **kwargs) == "a":
            raise Injected("injected fault")
        return original(*args, **kwargs)

    return patched


def _render(monkeypatch: pytest.MonkeyPatch, bus: StateBus) -> None:
    from ghitwork.config.prompt import PromptTemplate

    original = PromptTemplate.render

    def render(self: PromptTemplate, context: dict[str, Any]) -> str:
        if context["agent"]["name"] == "a":
            raise Injected("injected fault")
        return original(self, context)

    monkeypatch.setattr(PromptTemplate, "render", render)


def _spawn(monkeypatch: pytest.MonkeyPatch, bus: StateBus) -> None:
    original = Child.start.__func__  # type: ignore[attr-defined]

    def start(cls: type[Child], argv: Any, cwd: Any, env: Mapping[str, str]) -> Child:
        if env.get("GHIT_WORK_AGENT") == "a":
            raise Injected("injected fault")
        return original(cls, argv, cwd, env)  # type: ignore[no-any-return]

    monkeypatch.setattr(Child, "start", classmethod(start))


def _output(monkeypatch: pytest.MonkeyPatch, bus: StateBus) -> None:
    original = Stream.chunk

    def chunk(self: Stream, data: bytes) -> None:
        if b"from-a" in data:
            raise Injected("injected fault")
        original(self, data)

    monkeypatch.setattr(Stream, "chunk", chunk)


def _accounting(monkeypatch: pytest.MonkeyPatch, bus: StateBus) -> None:
    monkeypatch.setattr(usage, "charge", _for_agent_a(usage.charge, lambda agent, *_: agent))


def _archive(monkeypatch: pytest.MonkeyPatch, bus: StateBus) -> None:
    def write_record(self: LogFiles, *args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LogFiles, "write_record", write_record)


def _journal(monkeypatch: pytest.MonkeyPatch, bus: StateBus) -> None:
    original = Store.record_events

    def record_events(self: Store, routes: Any) -> int | None:
        routes = tuple(routes)
        if any(event.id == 3 for event, _ in routes):
            raise Injected("injected fault")
        return original(self, routes)

    monkeypatch.setattr(Store, "record_events", record_events)


def _route(monkeypatch: pytest.MonkeyPatch, bus: StateBus) -> None:
    original = Matcher.match

    def match(self: Matcher, event: Any) -> tuple[str, ...]:
        if event.id == 3:
            raise Injected("injected fault")
        return original(self, event)

    monkeypatch.setattr(Matcher, "match", match)


def _reader(monkeypatch: pytest.MonkeyPatch, bus: StateBus) -> None:
    original = Decoder.decode

    def decode(self: Decoder, lines: list[bytes]) -> Any:
        if any(b'"id": 3,' in line for line in lines):
            raise Injected("injected fault")
        return original(self, lines)

    monkeypatch.setattr(Decoder, "decode", decode)


def _subscriber(monkeypatch: pytest.MonkeyPatch, bus: StateBus) -> None:
    def observer(change: Change) -> None:
        if isinstance(change, RunFinished) and change.agent == "a":
            raise Injected("injected fault")

    bus.changes.subscribe(observer)


CONTAINED = {
    "render": _render,
    "spawn": _spawn,
    "output read": _output,
    "accounting": _accounting,
    "archive write": _archive,
}
FATAL = {
    "journal write": _journal,
    "route": _route,
    "event reader": _reader,
    "state bus subscriber": _subscriber,
}

AGENT = """\
import json, os, sys
prompt = sys.stdin.read()
name = os.environ["GHIT_WORK_AGENT"]
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"agent": name, "prompt": prompt}) + "\\n")
print("from-" + name)
"""


def _daemon(setup: Setup, events: int, inject: Injector | None) -> tuple[int, str]:
    """ghit-work in this process on `events` events, --drain: its exit and status lines."""
    script = setup.path / "agent_a_b.py"
    script.write_text(AGENT)
    logdir = str(setup.path / "logs")
    agents = {name: {"cmd": [sys.executable, str(script)], "logdir": logdir} for name in "ab"}
    setup.write_config(agents, tail=["--delay", "0.05"], run_attempts=2, run_backoff=0.05)
    if not setup.events.read_text():
        write_events(setup.events, [event(i) for i in range(1, events + 1)])
    bus = StateBus()
    out = io.StringIO()
    bus.changes.subscribe(StatusWriter(out, Level.INFO, False))
    with pytest.MonkeyPatch.context() as monkeypatch:
        if inject is not None:
            inject(monkeypatch, bus)
        daemon = Daemon(load_config(setup.config), bus, drain=True)
        code = asyncio.run(daemon.run())
    return int(code), out.getvalue()


@pytest.fixture
def fresh_loop_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


@pytest.mark.parametrize("stage", list(CONTAINED))
def test_a_fault_in_one_run_fails_that_run_and_every_other_agent_is_served(
    setup: Setup, stage: str, fresh_loop_policy: None
) -> None:
    code, text = _daemon(setup, 4, CONTAINED[stage])
    assert set(setup.delivered("b")) == {1, 2, 3, 4}, text
    assert "injected fault" in text or "No space left on device" in text, text
    assert "error:" in text and "dead letter" in text, f"a's batch is retried, then buried: {text}"
    assert "fatal" not in text, text
    assert code == Exit.OK, text


@pytest.mark.parametrize("stage", list(FATAL))
def test_a_fault_that_cannot_be_contained_exits_4_and_a_restart_loses_nothing(
    setup: Setup, stage: str, fresh_loop_policy: None
) -> None:
    code, text = _daemon(setup, 6, FATAL[stage])
    assert code == Exit.FATAL, text
    (fatal,) = [line for line in text.splitlines() if "ERROR   fatal:" in line]
    assert "injected fault" in fatal, fatal
    code, text = _daemon(setup, 6, None)
    assert code == Exit.OK, text
    for agent in "ab":
        assert set(setup.delivered(agent)) == set(range(1, 7)), (agent, text)


# -- a stop always ends


def test_a_sigterm_ends_a_daemon_whose_agent_ignores_it(setup: Setup) -> None:
    """An agent that ignores SIGTERM is SIGKILLed after the grace time, and the stop ends
    within the grace time plus 5 s."""
    script = setup.path / "stubborn.py"
    script.write_text(
        "import signal, sys, time\nsys.stdin.read()\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1], 'w').close()\ntime.sleep(60)\n"
    )
    started = setup.path / "started"
    setup.write_config(
        {"a": {"cmd": [sys.executable, str(script), str(started)]}}, tail=["--follow"]
    )
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(started.exists, what="the agent to run")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=12) == 0
        assert "saved 1 undelivered event(s)" in daemon.text


def test_the_exit_statuses_are_the_documented_ones() -> None:
    assert [int(code) for code in Exit] == [0, 1, 2, 3, 4]
    help_text = subprocess.run(
        [GHIT_WORK, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "4" in help_text and "cannot be contained" in help_text, help_text


# -- a restart on a full disk either works or says why and exits; it never hangs


def test_a_restart_on_a_full_disk_exits_with_a_clear_error_and_loses_nothing(
    setup: Setup, disk: Path
) -> None:
    state = disk / "state"
    gate = setup.path / "go"
    script = setup.path / "gated.py"
    script.write_text(
        "import json, os, sys, time\nprompt = sys.stdin.read()\n"
        "with open(os.environ['RECORD'], 'a') as f:\n"
        "    f.write(json.dumps({'agent': 'a', 'prompt': prompt}) + '\\n')\n"
        f"while not os.path.exists({str(gate)!r}):\n    time.sleep(0.02)\n"
    )
    setup.write_config(
        {"a": {"cmd": [sys.executable, str(script)]}}, tail=["--follow"], state_dir=str(state)
    )
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(lambda: setup.delivered("a") == [1], what="the first run")
        write_events(setup.events, [event(i) for i in range(2, 7)])
        poll(lambda: any(b'"id": 6' in j.read_bytes() for j in state.glob("journal-*")), 10)
        daemon.process.kill()  # a crash, with batch [1] interrupted and 5 events queued
        daemon.process.wait()
    end_leftovers(state)
    filler = fill(disk)
    with Running(setup.path) as daemon:
        assert daemon.process.wait(timeout=15) == Exit.FAILURE, daemon.text
        assert "No space left on device" in daemon.text, daemon.text
        assert "nothing was started" in daemon.text, daemon.text
        assert "Traceback" not in daemon.text
    assert setup.delivered("a") == [1], "no run started on the full disk"
    filler.unlink()
    gate.touch()
    with Running(setup.path) as daemon:
        poll(lambda: set(setup.delivered("a")) >= set(range(1, 7)), what="every event")
        assert setup.delivered("a")[1:] == [1, 2, 3, 4, 5, 6], "redelivered, then queued ones"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_the_error_funnel_follows_log_format_json(tmp_path: Path) -> None:
    """Every stderr line follows --log-format (SPEC §11), the one-line errors too."""
    for args in (["-c", "missing.toml"], ["--limit", "x"], ["check", "-c", "missing.toml"]):
        result = ghit_work("--log-format", "json", *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        record = json.loads(line)
        assert record["level"] == "error" and record["message"].startswith("ghit-work: error: ")
    plain = ghit_work("-c", "missing.toml", cwd=tmp_path)
    assert plain.stderr.startswith("ghit-work: error: missing.toml: no such file")
    bare = ghit_work(cwd=tmp_path)  # no argument at all: ghit-work.toml is missing
    assert bare.returncode == 2 and bare.stderr.startswith("ghit-work: error: ghit-work.toml: ")


def test_a_reload_to_a_tail_command_that_does_not_exist_keeps_the_old_one(setup: Setup) -> None:
    """Not a transient failure to retry for the whole window: the reload is refused, naming
    ghit-work.tail_cmd, and the stream goes on."""
    setup.write_config({"a": {}}, tail=["--follow"])
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        poll(lambda: setup.delivered("a") == [1], what="event 1")
        text = setup.config.read_text().replace(
            "tail_cmd = [", 'tail_cmd = ["/nonexistent/ghit-cli", '
        )
        setup.config.write_text(text)
        daemon.signal(signal.SIGHUP)
        line = daemon.wait_for("config not reloaded, the old one stays in force")
        assert "ghit-work.tail_cmd: /nonexistent/ghit-cli: no such file" in line
        write_events(setup.events, [event(2)])
        poll(lambda: setup.delivered("a") == [1, 2], what="event 2 from the old stream")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert "tail-events: retry in" not in daemon.text


def test_a_drain_ends_with_the_stream_healthy_in_status_json(setup: Setup) -> None:
    setup.write_config({"a": {}})
    write_events(setup.events, [event(1)])
    assert ghit_work("--drain", cwd=setup.path).returncode == 0
    status = json.loads((setup.path / ".ghit-work" / "status.json").read_text())
    assert status["stream"]["state"] == "healthy", status["stream"]
