"""At-least-once and single flight across crashes, as a property over crash points: ghit-work
killed with -9 at any moment of a scripted stream (once or twice), then run to the end, has
delivered every event to every agent that subscribes, and never ran two runs of one agent at
the same time (SPEC §5, §11)."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from conftest import GHIT_WORK, Setup, end_leftovers, event, ghit_work, write_events
from hypothesis import given, settings
from hypothesis import strategies as st

EVENTS = 6
AGENTS = ("a", "b")

# Logs its start, and its end: "ok" when it finished its batch, not when it was ended by a
# signal (the next instance ends what a killed one left running).
AGENT = """\
import json, os, signal, sys, time
def write(kind, ok=False):
    with open(os.environ["LOG"], "a") as f:
        f.write(json.dumps({"agent": os.environ["GHIT_WORK_AGENT"], "pid": os.getpid(),
                            "kind": kind, "t": time.time(), "ids": ids, "ok": ok}) + "\\n")
ids = []
signal.signal(signal.SIGTERM, lambda *_: (write("end"), os._exit(1)))
ids = [int(word) for word in sys.stdin.read().split()]
write("start")
time.sleep(0.1)
write("end", ok=True)
"""


# A crash point: seconds after the start, or the moment the Nth agent process has exec'd
# (while the runs of the same read are still being spawned and recorded).
CRASH = st.one_of(st.floats(min_value=0.0, max_value=1.2), st.integers(min_value=1, max_value=4))


@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(crashes=st.lists(CRASH, min_size=1, max_size=2))
def test_after_crashes_every_event_is_delivered_and_no_agents_runs_overlap(
    crashes: list[float | int],
) -> None:
    with tempfile.TemporaryDirectory(prefix="ghit-work-crash-") as tmp:
        path = Path(tmp)
        try:
            runs = crash_then_finish(path, crashes)
        finally:
            end_leftovers(path / ".ghit-work")
    for agent in AGENTS:
        mine = [run for run in runs if run["agent"] == agent]
        delivered = {i for run in mine if run.get("ok") for i in run["ids"]}
        assert delivered == set(range(1, EVENTS + 1)), f"{agent} missed events ({crashes})"
        spans = sorted((run["start"], run.get("end", float("inf")), run["pid"]) for run in mine)
        for (_, end, pid), (start, _, other) in itertools.pairwise(spans):
            assert end <= start, f"{agent}: run {pid} and run {other} overlap ({crashes})"


def crash_then_finish(path: Path, crashes: list[float | int]) -> list[dict[str, Any]]:
    """Kill -9 a ghit-work at each crash point in turn; then run one to the end of the
    stream. The runs, by pid, with their start, end, ids and whether they ended ok."""
    setup = Setup(path)
    (path / "agent.py").write_text(AGENT)
    log = path / "runs.jsonl"
    write_events(setup.events, [event(i) for i in range(1, EVENTS + 1)])
    setup.write_config(
        {name: {"env": {"LOG": str(log)}} for name in AGENTS}, tail=["--delay", "0.1"]
    )
    for crash in crashes:
        process = subprocess.Popen(
            [GHIT_WORK, "--drain"],
            cwd=path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if isinstance(crash, int):
            wait_for_exec(process, crash)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=crash)
        process.send_signal(signal.SIGKILL)  # (a no-op when it had finished by then)
        process.wait()
    started = time.monotonic()
    result = ghit_work("--drain", cwd=path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    runs: dict[int, dict[str, Any]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        record = json.loads(line)
        run = runs.setdefault(record["pid"], {"agent": record["agent"], "pid": record["pid"]})
        run[record["kind"]] = record["t"]
        run["ids"] = record["ids"] or run.get("ids", [])
        run["ok"] = run.get("ok", False) or record["ok"]
    return [run for run in runs.values() if "start" in run]


def wait_for_exec(process: subprocess.Popen[bytes], count: int) -> None:
    """Until `count` agent processes of `process` have exec'd (or it exits, or 5 s pass)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    seen: set[str] = set()
    deadline = time.monotonic() + 5
    while len(seen) < count and process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for child in children.read_text().split():
                if child not in seen and b"agent.py" in Path(f"/proc/{child}/cmdline").read_bytes():
                    seen.add(child)
