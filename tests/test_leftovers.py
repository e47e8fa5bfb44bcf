"""What ghit-work's children leave running, through the real command: nothing of an instance
outlives it, whether it stops or is killed (SPEC §5 single flight, §8, §11; issue 21)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import GHIT_WORK, REPLAY, Running, Setup, event, ghit_work, poll, toml_list

from ghitwork.system.children import MARK


def alive(pid: int) -> bool:
    """The process runs (a zombie waiting to be reaped has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] not in (b"Z", b"X")


def pids(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()] if path.exists() else []


def use_tail(setup: Setup, argv: list[str]) -> None:
    """The config's tail_cmd replaced by `argv`."""
    lines = setup.config.read_text().splitlines()
    lines = [f"tail_cmd = {toml_list(argv)}" if x.startswith("tail_cmd =") else x for x in lines]
    setup.config.write_text("\n".join(lines) + "\n")


def sh_agent(script: str) -> dict[str, object]:
    return {"cmd": ["sh", "-c", script]}


def test_a_kill_9_right_after_a_spawn_leaves_no_agent_once_the_next_start_delivers(
    setup: Setup,
) -> None:
    """ghit-work killed the instant its first agent execs, while the others of the same read
    are being spawned (before their groups can be recorded): the next start still recognises
    every one of them (by its mark) and ends it before it delivers anything."""
    spawned = setup.path / "agents"
    agent = sh_agent(f"echo $$ $PPID >> {spawned}; exec sleep 60")
    setup.write_config({name: agent for name in "abcdef"}, tail=["--follow"])
    for attempt in range(1, TRIES + 1):
        with (setup.events).open("a") as handle:
            handle.write(json.dumps(event(attempt)) + "\n")
        killed = subprocess.Popen(
            [GHIT_WORK],
            cwd=setup.path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert killed.stderr is not None
        for line in killed.stderr:
            if b"-> working" in line:
                _kill_at_first_exec(killed)
                break
        killed.wait()
        killed.stderr.close()
        with Running(setup.path) as daemon:
            # The interrupted batches come again: runs of the new instance.
            poll(lambda: _agents(spawned, daemon.process.pid), what="the new instance's run")
            old = [pid for pid in _agents(spawned, killed.pid) if alive(pid)]
            assert old == [], f"try {attempt}: agents of the killed instance still run"
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0, daemon.text


TRIES = 3


def _kill_at_first_exec(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL `process` the moment one of its children has exec'd an agent (`sh`, which
    execs `sleep`)."""
    deadline = time.monotonic() + 10
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    while time.monotonic() < deadline:
        for child in children.read_text().split():
            with contextlib.suppress(OSError):
                # the agent: `sh`, or already the `sleep` it execs (a few microseconds
                # later: a look that comes after it must still count)
                if Path(f"/proc/{child}/cmdline").read_bytes().startswith((b"sh\0", b"sleep\0")):
                    process.kill()
                    return
    process.kill()
    raise AssertionError("no agent started within 10 s")


def _agents(path: Path, parent: int) -> list[int]:
    """The pids of the agents that ghit-work process started."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [int(pid) for pid, ppid in (line.split() for line in lines) if int(ppid) == parent]


def test_tail_events_wrappers_child_is_ended_at_the_next_start(setup: Setup) -> None:
    """tail-events is a wrapper (`sh -c "cat FIFO; ..."`): after a kill -9 its child would go
    on reading the stream beside the next instance's and swallow events."""
    fifo = setup.path / "stream"
    os.mkfifo(fifo)
    setup.write_config({"a": {}})
    use_tail(setup, ["sh", "-c", f"cat {fifo}; echo done >&2"])
    writer = os.open(fifo, os.O_RDWR)  # held open: cat never sees the end
    try:
        os.write(writer, (json.dumps(event(1)) + "\n").encode())
        with Running(setup.path) as first:
            poll(lambda: setup.delivered("a") == [1], what="event 1")
            tail = int(first.wait_for("tail-events: started (pid ").split("(pid ")[1].split(")")[0])
            cat = poll(lambda: _child(tail) or 0, what="the wrapper's child")
            first.signal(signal.SIGKILL)
            first.wait()
        with Running(setup.path) as second:
            second.wait_for("tail-events: started")
            assert not alive(cat), "the killed instance's cat still reads the stream"
            assert f"tail-events (process group {tail})" in second.text, "recorded, and ended"
            os.write(writer, (json.dumps(event(2)) + "\n").encode())
            # (event 1 may come again: its run had not been recorded as ended)
            poll(lambda: 2 in setup.delivered("a"), what="event 2, read by the new cat")
            second.signal(signal.SIGTERM)
            assert second.wait() == 0
    finally:
        os.close(writer)


# tail-events as a wrapper whose child ignores SIGTERM and holds the stream.
HOLDER = """\
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1]) as events:
    sys.stdout.write(events.read())
sys.stdout.flush()
with open(sys.argv[2], "w") as f:
    f.write(str(__import__("os").getpid()))
time.sleep(60)
"""


def test_a_stop_ends_a_tail_events_wrappers_child_that_ignores_sigterm(setup: Setup) -> None:
    holder, pid_file = setup.path / "holder.py", setup.path / "holder.pid"
    holder.write_text(HOLDER)
    setup.write_config({"a": {}})
    script = f"{sys.executable} {holder} {setup.events} {pid_file} & wait"
    use_tail(setup, ["sh", "-c", script])
    with (setup.events).open("a") as handle:
        handle.write(json.dumps(event(1)) + "\n")
    with Running(setup.path) as daemon:
        poll(lambda: setup.delivered("a") == [1], what="event 1")
        child = int(poll(lambda: pid_file.read_text() if pid_file.exists() else "", what="its pid"))
        stopped = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.text
        assert time.monotonic() - stopped < 9, "SIGKILL 5 s after SIGTERM, then the exit"
    assert not alive(child)


LEAVER = """\
import os, signal, subprocess, sys, time
here = sys.argv[1]
# A leftover in the run's group that ignores SIGTERM.
subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "open(sys.argv[1], 'w').write(str(__import__('os').getpid())); time.sleep(60)",
                  os.path.join(here, "stubborn.pid")],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
# A daemon: setsid and a double fork, out of the run's group.
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        with open(os.path.join(here, "daemon.pid"), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    os._exit(0)
os.wait()
while not all(os.path.exists(os.path.join(here, n)) for n in ("stubborn.pid", "daemon.pid")):
    time.sleep(0.01)
print("done")
"""


def test_a_stop_ends_what_ignores_sigterm_and_names_what_left_its_group(setup: Setup) -> None:
    leaver = setup.path / "leaver.py"
    leaver.write_text(LEAVER)
    setup.write_config({"a": {"cmd": [sys.executable, str(leaver), str(setup.path)]}})
    use_tail(setup, [REPLAY, str(setup.events), "--follow"])
    with (setup.events).open("a") as handle:
        handle.write(json.dumps(event(1)) + "\n")
    with Running(setup.path) as daemon:
        daemon.wait_for("agent a: working -> idle, exit 0")
        stubborn = int((setup.path / "stubborn.pid").read_text())
        escaped = int((setup.path / "daemon.pid").read_text())
        assert alive(stubborn) and alive(escaped)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.text
        text = daemon.text
    assert not alive(stubborn), "a leftover that ignores SIGTERM outlived the stop"
    assert not alive(escaped), "a daemon of a run outlived the stop"
    assert f"agent a (pid {escaped} in process group " in text, "named with its pid"
    assert "killed (SIGKILL) " in text


def test_sigterm_during_the_output_drain_keeps_an_exit_0_run_delivered(setup: Setup) -> None:
    """The run ended at the agent's exit 0; a stop during the 2 s it takes to read what a
    child of it still prints does not make its batch come again."""
    pid_file, runs = setup.path / "agent.pid", setup.path / "runs"
    setup.write_config(
        {"a": sh_agent(f"echo $$ > {pid_file}; cat >> {runs}; sleep 30 & exit 0")},
        tail=["--follow"],
    )
    with (setup.events).open("a") as handle:
        handle.write(json.dumps(event(1)) + "\n")
    with Running(setup.path) as daemon:
        agent = poll(lambda: pids(pid_file), what="the agent")[0]
        poll(lambda: not alive(agent), timeout=5, what="the agent's exit")
        daemon.signal(signal.SIGTERM)  # sleep holds stdout: the drain has 2 s to go
        assert daemon.wait() == 0
        text = daemon.text
    assert "agent a: working -> idle, exit 0" in text, text
    assert "delivered again" not in text
    setup.write_config({"a": sh_agent(f"cat >> {runs}")})  # the stream ends: --drain exits
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    assert "saved event" not in result.stderr
    assert runs.read_text().split() == ["1"], "event 1 was delivered again"


def test_every_child_carries_the_instances_mark(setup: Setup) -> None:
    setup.write_config({"a": sh_agent(f'echo "${MARK}" > {setup.path}/mark')})
    with (setup.events).open("a") as handle:
        handle.write(json.dumps(event(1)) + "\n")
    result = ghit_work("--drain", cwd=setup.path)
    assert result.returncode == 0, result.stderr
    pid, start = (setup.path / "mark").read_text().strip().split(".")
    assert int(pid) > 0 and int(start) > 0
    header = json.loads((setup.path / ".ghit-work" / "children").read_text().splitlines()[0])
    assert header["instance"] == f"{pid}.{start}"


def _child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None
