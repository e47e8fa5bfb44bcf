"""Shared helpers: the real commands, config files in temp dirs, polling with a deadline."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ghitwork.persist.store import running_pid
from ghitwork.system.children import left_behind

BIN = Path(sys.executable).parent
GHIT_WORK = str(BIN / "ghit-work")
REPLAY = str(BIN / "ghit-work-replay")
ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def poll(check: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    """Return check()'s first truthy value (never None); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def ghit_work(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    **options: Any,  # more of subprocess.run's (umask, preexec_fn)
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GHIT_WORK, *args],
        cwd=cwd,
        env=dict(env or os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **options,
    )


def with_commands(tmp_path: Path, *names: str) -> dict[str, str]:
    """The environment with executables `names` (that print nothing) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        path = bin_dir / name
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def event(
    ident: int,
    kind: str = "reply-created",
    actor: str | None = "alice",
    scopes: Iterable[str] = ("thread:teams/ghit/ghit/39",),
    title: str = "Add rate limiting",
) -> dict[str, Any]:
    return {
        "id": ident,
        "kind": kind,
        "actor_user_uuid": None if actor is None else f"uuid-{actor}",
        "actor_user_username": actor,
        "scopes": list(scopes),
        "summary": {
            "thread_title": title,
            "web_url": f"https://ghit.example/teams/ghit/ghit/threads/{ident}",
            "api_url": f"https://ghit.example/api/v1/teams/ghit/repos/ghit/threads/{ident}",
        },
        "created_at": "2026-03-19T12:00:00Z",
    }


def write_events(path: Path, events: Iterable[dict[str, Any] | str]) -> Path:
    with path.open("a") as handle:
        for item in events:
            handle.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


def toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


AGENT_SCRIPT = """\
import json, os, sys, time
prompt = sys.stdin.read()
name = os.environ["GHIT_WORK_AGENT"]
record = {"agent": name, "prompt": prompt, "argv": sys.argv[1:], "cwd": os.getcwd(),
          "env_token": os.environ.get("GHIT_API_TOKEN"), "env_url": os.environ.get("GHIT_API_URL"),
          "extra": os.environ.get("EXTRA"), "start": time.time()}
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps(record) + "\\n")
time.sleep(float(os.environ.get("SLEEP", "0")))
with open(os.environ["RECORD"] + ".end", "a") as f:
    f.write(json.dumps({"agent": name, "end": time.time()}) + "\\n")
print(os.environ.get("SAY", "done"))
sys.exit(int(os.environ.get("EXIT", "0")))
"""


class Setup:
    """A temp dir with a config, an events file, and a recording fake agent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events = path / "events.jsonl"
        self.events.touch()
        self.records = path / "records.jsonl"
        self.agent_py = path / "agent.py"
        self.agent_py.write_text(AGENT_SCRIPT)
        self.config = path / "ghit-work.toml"

    def agent_cmd(self) -> list[str]:
        return [sys.executable, str(self.agent_py)]

    def write_config(
        self,
        agents: Mapping[str, Mapping[str, Any]],
        tail: Iterable[str] = (),
        prompt: str = "{% for e in events %}{{ e.id }} {% endfor %}",
        **top: Any,
    ) -> Path:
        lines = [
            "[ghit-work]",
            f"tail_cmd = {toml_list([REPLAY, str(self.events), *tail])}",
            f"agent_prompt = {json.dumps(prompt)}",
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in top.items()]
        for name, settings in agents.items():
            lines.append(f"[agents.{name}]")
            values = {
                "cmd": self.agent_cmd(),
                "username": name,
                "event_scopes": ["team:ghit"],
                "event_kinds": ["reply-created"],
                "env": {"RECORD": str(self.records)},
            }
            values.update(settings)
            for key, value in values.items():
                if isinstance(value, dict):
                    pairs = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                    lines.append(f"{key} = {{ {pairs} }}")
                else:
                    lines.append(f"{key} = {json.dumps(value)}")
        self.config.write_text("\n".join(lines) + "\n")
        return self.config

    def runs(self) -> list[dict[str, Any]]:
        if not self.records.exists():
            return []
        return [json.loads(line) for line in self.records.read_text().splitlines() if line]

    def delivered(self, agent: str) -> list[int]:
        ids: list[int] = []
        for run in self.runs():
            if run["agent"] == agent:
                ids += [int(word) for word in run["prompt"].split()]
        return ids


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    yield Setup(tmp_path)
    end_leftovers(tmp_path / ".ghit-work")


def end_leftovers(state_dir: Path) -> None:
    """A test ends everything it started, however it ended: a ghit-work still running on the
    state dir (a failed TUI test's: tmux's SIGHUP only reloads it), then the process groups a
    killed ghit-work recorded there (agents; tail-events dies with its parent)."""
    pid = running_pid(state_dir)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        poll(lambda: running_pid(state_dir) is None, 10, "a leftover ghit-work to die")
    for group in left_behind(state_dir / "children"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group.pgid, signal.SIGKILL)


class Running:
    """A `ghit-work` process in the background, its stderr in a file to poll."""

    def __init__(
        self,
        cwd: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        preexec: Callable[[], object] | None = None,
    ) -> None:
        """`preexec`: run in the child before ghit-work starts (e.g. a resource limit)."""
        self.log = cwd / f"ghit-work-{time.monotonic_ns()}.log"
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(
                [GHIT_WORK, *args],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=dict(env or os.environ),
                preexec_fn=preexec,
            )

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *_: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 20.0, count: int = 1) -> str:
        """ghit-work's stderr once `text` appears in it `count` times."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.process.poll() is not None
            current = self.text
            if current.count(text) >= count:
                return current
            if exited or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in ghit-work's stderr:\n{current}")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)


# -- a disk that fills (a real one: a small tmpfs; root only)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted afterwards (whatever ghit-work left running on it ended)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills) needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        end_leftovers(mount / "state")
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`; the file returned gives them back when removed."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle, pytest.raises(OSError) as full:
        while True:
            handle.write(b"\0" * 65536)
    assert full.value.errno == errno.ENOSPC
    return filler
