"""The real `ghit-work --tui` in a real terminal (tmux): keys in, screen text out."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GHIT_WORK, Setup, event, poll, write_events

if shutil.which("tmux") is None and not os.environ.get("CI"):
    pytest.skip("tmux is not installed (.ci/run installs it)", allow_module_level=True)


class Tmux:
    def __init__(self, cwd: Path, width: int = 120, height: int = 30) -> None:
        self.socket = f"ghit-work-test-{os.getpid()}-{id(self)}"
        self.run(
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            str(width),
            "-y",
            str(height),
            "-c",
            str(cwd),
            "sh",
        )
        self.run("set-option", "-t", "t", "status", "off")

    def run(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return result.stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        self.run("send-keys", "-t", "t", "-l", text)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        """The screen once it shows `text` and has settled: a capture can fall in the middle
        of a frame being written, so two captures in a row must agree."""

        def found() -> str:
            screen = self.screen()
            if text not in screen:
                return ""
            time.sleep(0.05)  # let a frame being written finish before comparing
            return screen if self.screen() == screen else ""

        try:
            return poll(found, timeout, f"{text!r} on the screen")
        except AssertionError:
            raise AssertionError(f"{text!r} not on the screen:\n{self.screen()}") from None

    def wait_gone(self, text: str, timeout: float = 20.0) -> str:
        def gone() -> str:
            screen = self.screen()
            return screen if text not in screen else ""

        return poll(gone, timeout, f"{text!r} to leave the screen")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux(setup: Setup) -> Iterator[Tmux]:
    terminal = Tmux(setup.path)
    yield terminal
    terminal.kill()


def start(tmux: Tmux, *args: str) -> None:
    command = shlex.join([GHIT_WORK, "--tui", *args])
    tmux.type(f"{command}; echo EXITED=$?")
    tmux.keys("Enter")


def two_agents(setup: Setup) -> None:
    setup.write_config(
        {
            "codex": {
                "env": {"RECORD": str(setup.records), "SLEEP": "60"},
                "event_kinds": ["thread-created"],
            },
            "claude": {},
        },
        tail=["--follow"],
    )


def test_it_shows_the_config_and_agents_and_new_events_appear(setup: Setup, tmux: Tmux) -> None:
    two_agents(setup)
    start(tmux)
    screen = tmux.wait_for("healthy")
    assert "ghit-work.toml" in screen and "codex idle" in screen and "claude idle" in screen
    tmux.keys("Tab")
    tmux.wait_for("no events yet")
    write_events(setup.events, [event(7, title="A brand new thread")])
    screen = tmux.wait_for("A brand new thread")
    assert "7 reply-created" in screen and "-> claude" in screen
    tmux.keys("q")
    tmux.wait_for("EXITED=0")


def test_selection_details_and_the_filter(setup: Setup, tmux: Tmux) -> None:
    two_agents(setup)
    write_events(setup.events, [event(1, title="Rate limits"), event(2, title="Docs typo")])
    start(tmux)
    tmux.wait_for("claude idle")
    tmux.keys("Right", "Enter")
    screen = tmux.wait_for("Agent claude (Esc to leave)")
    assert "username: claude" in screen and "last runs:" in screen
    tmux.keys("Left")
    tmux.wait_for("Agent codex (Esc to leave)")
    tmux.keys("Escape")
    tmux.wait_gone("Esc to leave")
    tmux.keys("Tab", "/")
    tmux.wait_for("filter: _")
    tmux.type("typo")
    tmux.keys("Enter")
    screen = tmux.wait_for("Events [filter: typo]")
    assert "Docs typo" in screen and "Rate limits" not in screen
    tmux.keys("Escape")
    screen = tmux.wait_for("Rate limits")
    assert "Docs typo" in screen
    tmux.keys("q")
    tmux.wait_for("EXITED=0")


def test_r_reloads_the_config(setup: Setup, tmux: Tmux) -> None:
    two_agents(setup)
    start(tmux)
    tmux.wait_for("claude idle")
    two_agents(setup)
    setup.config.write_text(
        setup.config.read_text()
        + (
            '[agents.newbie]\ncmd = ["true"]\nusername = "newbie"\n'
            'event_scopes = ["team:ghit"]\nevent_kinds = ["reply-created"]\n'
        )
    )
    tmux.keys("r")
    tmux.wait_for("newbie idle")
    tmux.keys("q")
    tmux.wait_for("EXITED=0")


def test_k_stops_the_selected_working_agent(setup: Setup, tmux: Tmux) -> None:
    two_agents(setup)
    write_events(setup.events, [event(1, kind="thread-created")])
    start(tmux)
    tmux.wait_for("codex working")
    tmux.keys("k")
    screen = tmux.wait_for("k: SIGTERM sent to agent codex (pid ")
    assert "Attention" in screen
    tmux.wait_for("stopped by the operator")
    tmux.wait_for("dead letter 1")
    tmux.wait_for("codex failing ✝1")
    tmux.keys("Enter")
    tmux.wait_for("dead letters: 1 (R hands them all back)")
    tmux.keys("R")
    tmux.wait_for("dead letters: none")
    screen = tmux.wait_for("codex working")
    assert "✝" not in screen.splitlines()[1], "no dead letter left in the strip"
    tmux.keys("Escape")
    tmux.wait_for("R: 1 dead letter(s) of codex handed back")
    tmux.keys("Tab", "Tab")
    tmux.wait_for("dead letter 1 handed back to codex (1 event) by the dashboard")
    tmux.keys("q")
    tmux.wait_for("EXITED=0")


def test_q_exits_0_and_leaves_the_terminal_usable(setup: Setup, tmux: Tmux) -> None:
    two_agents(setup)
    start(tmux)
    tmux.wait_for("claude idle")
    tmux.keys("q")
    tmux.wait_for("EXITED=0")
    tmux.type("echo usable-$((40+2))")
    tmux.keys("Enter")
    tmux.wait_for("usable-42")


def test_ctrl_c_quits_cleanly_too(setup: Setup, tmux: Tmux) -> None:
    two_agents(setup)
    start(tmux)
    tmux.wait_for("claude idle")
    tmux.keys("C-c")
    tmux.wait_for("EXITED=0")


def test_a_resize_redraws_and_keeps_the_selection(setup: Setup, tmux: Tmux) -> None:
    two_agents(setup)
    start(tmux)
    tmux.wait_for("claude idle")
    tmux.keys("Right", "Enter")
    tmux.wait_for("Agent claude (Esc to leave)")
    tmux.run("resize-window", "-t", "t", "-x", "80", "-y", "24")
    screen = tmux.wait_for("Agent claude (Esc to leave)")
    assert max(len(line) for line in screen.splitlines()) <= 80
    tmux.run("resize-window", "-t", "t", "-x", "120", "-y", "40")
    tmux.keys("Escape")
    tmux.wait_for("── Attention")
    tmux.keys("q")
    tmux.wait_for("EXITED=0")


def test_it_stays_responsive_under_a_flood_of_events(setup: Setup, tmux: Tmux) -> None:
    setup.write_config({"a": {"cmd": ["true"]}, "b": {"cmd": ["true"]}}, tail=["--follow"])
    start(tmux)
    tmux.wait_for("healthy")
    write_events(setup.events, [event(i, title=f"flood {i}") for i in range(1, 20001)])
    tmux.wait_for("events 20000 ", timeout=60)
    tmux.keys("Tab")
    tmux.wait_for("flood 20000")
    tmux.keys("q")
    tmux.wait_for("EXITED=0")


def test_p_pauses_and_resumes_the_selected_agent(setup: Setup, tmux: Tmux) -> None:
    """SPEC §13: `p` pauses the selected agent (its events queue), `p` again resumes it."""
    two_agents(setup)
    start(tmux)
    tmux.wait_for("codex idle")
    tmux.keys("p")
    tmux.wait_for("p: codex paused")
    tmux.wait_for("codex paused")
    write_events(setup.events, [event(1, kind="thread-created")])
    tmux.keys("Tab", "Tab")
    tmux.wait_for("agent codex: idle -> paused")
    assert setup.delivered("codex") == []
    tmux.keys("p")
    tmux.wait_for("p: codex resumed")
    poll(lambda: setup.delivered("codex") == [1], what="codex's queued event once resumed")
    tmux.keys("q")
    tmux.wait_for("EXITED=0")


def test_nothing_is_written_to_stderr_while_the_tui_owns_the_terminal(
    setup: Setup, tmux: Tmux
) -> None:
    """SPEC §6, with stderr redirected to a file so that a line written there is seen; a
    failure (exit 3 here) is said on stderr once the terminal is given back."""
    two_agents(setup)
    err = setup.path / "stderr.txt"
    tmux.type(f"{shlex.join([GHIT_WORK, '--tui'])} 2>{err}; echo EXITED=$?")
    tmux.keys("Enter")
    tmux.wait_for("healthy")
    write_events(setup.events, [event(7, title="A brand new thread")])
    tmux.keys("Tab", "Tab")  # the log pane: the status lines are there
    tmux.wait_for("agent claude: working -> idle")
    tmux.keys("q")
    tmux.wait_for("EXITED=0")
    assert err.read_text() == ""
    setup.write_config({"claude": {}}, retry="1s")
    text = re.sub(
        r"(?m)^tail_cmd = .*$", 'tail_cmd = ["no-such-tail-events"]', setup.config.read_text()
    )
    setup.config.write_text(text)
    tmux.type(f"{shlex.join([GHIT_WORK, '--tui'])} 2>{err}; echo EXITED=$?")
    tmux.keys("Enter")
    tmux.wait_for("EXITED=3")
    said = err.read_text().splitlines()
    assert said[0] == "ghit-work: exit status 3; the last warnings and errors:", said
    assert "command not found: 'no-such-tail-events'" in said[1]
    assert "gave up" in said[-1] and all(line.startswith("  ") for line in said[1:])
    tmux.type(f"{shlex.join([GHIT_WORK, '--tui', '--log-format', 'json'])} 2>{err}; echo JSON=$?")
    tmux.keys("Enter")
    tmux.wait_for("JSON=3")
    (line,) = err.read_text().splitlines()  # SPEC §11: every line follows --log-format
    found = json.loads(line)
    assert found["level"] == "error" and "exit status 3" in found["message"]
    assert "gave up" in found["message"]
