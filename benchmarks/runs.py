"""`nox -s bench` (run failures): figures for how runs end, against baselines from the same run.

  1. agent exit -> its next batch starting, when the agent leaves a child holding its stdout
     (20 runs), against the same agent leaving nothing behind: the bound is PIPE_GRACE (2 s);
  2. the cost of a parent-death signal for agents: spawning with a `preexec_fn` (which makes
     Python fork instead of vfork) against the plain spawn ghit-work uses, from a parent of
     about ghit-work's size.
Options: --quick (5 runs).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
GHIT_WORK = str(BIN / "ghit-work")
REPLAY = str(BIN / "ghit-work-replay")

AGENT = """\
import json, os, subprocess, sys, time
sys.stdin.read()
if os.environ.get("CHILD"):
    subprocess.Popen(["sleep", "30"])  # inherits stdout: holds the pipe open
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"start": time.time()}) + "\\n")
time.sleep(0.3)
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"end": time.time()}) + "\\n")
"""


def exit_to_next(root: Path, runs: int, child: bool) -> list[float]:
    """Seconds from each run's exit to the next run's start, with a batch always waiting."""
    work = root / ("child" if child else "plain")
    work.mkdir()
    (work / "agent.py").write_text(AGENT)
    events = work / "events.jsonl"
    events.touch()
    record = work / "record.jsonl"
    env = {"RECORD": str(record), **({"CHILD": "1"} if child else {})}
    pairs = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items())
    (work / "ghit-work.toml").write_text(
        "[ghit-work]\n"
        f"tail_cmd = {json.dumps([REPLAY, str(events), '--follow'])}\n"
        "[agents.a]\n"
        f"cmd = {json.dumps([sys.executable, str(work / 'agent.py')])}\n"
        'username = "a"\nevent_scopes = ["team:ghit"]\nevent_kinds = ["reply-created"]\n'
        f"env = {{ {pairs} }}\n"
    )
    process = subprocess.Popen(
        [GHIT_WORK], cwd=work, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with events.open("a") as stream:
            for ident in range(1, runs + 2):
                event = {
                    "id": ident,
                    "kind": "reply-created",
                    "actor_user_username": "alice",
                    "scopes": ["team:ghit"],
                    "summary": {"web_url": "u", "api_url": "u"},
                }
                stream.write(json.dumps(event) + "\n")
                stream.flush()
                deadline = time.monotonic() + 30
                while _count(record, "start") < ident:  # the run started: queue the next
                    if time.monotonic() > deadline:
                        raise SystemExit("runs: the agent never started")
                    time.sleep(0.005)
        deadline = time.monotonic() + 60
        while _count(record, "start") < runs + 1:
            if time.monotonic() > deadline:
                raise SystemExit("runs: the last batch never started")
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    starts = [line["start"] for line in lines if "start" in line]
    ends = [line["end"] for line in lines if "end" in line]
    return [starts[i + 1] - ends[i] for i in range(runs)]


def _count(path: Path, key: str) -> int:
    return path.read_text().count(f'"{key}"') if path.exists() else 0


def spawn_cost(count: int) -> tuple[float, float]:
    """ms per spawn: plain (vfork) and with a parent-death preexec_fn (fork)."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    ballast = [bytes(1000) for _ in range(40_000)]  # ~40 MB, like a busy ghit-work

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))

    def timed(**options: object) -> float:
        started = time.perf_counter()
        for _ in range(count):
            subprocess.Popen(
                ["true"], stdin=subprocess.DEVNULL, start_new_session=True, **options
            ).wait()  # type: ignore[call-overload]
        return (time.perf_counter() - started) / count * 1000

    plain = statistics.median(timed() for _ in range(3))
    with_pdeathsig = statistics.median(timed(preexec_fn=preexec) for _ in range(3))
    del ballast
    return plain, with_pdeathsig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args, _ = parser.parse_known_args()
    runs = 5 if args.quick else 20
    print("runs: how a run ends", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        held = exit_to_next(root, runs, child=True)
        plain = exit_to_next(root, runs, child=False)
    print(
        f"  agent exit -> next batch, child holding stdout ({runs} runs): "
        f"p50 {statistics.median(held):.2f} s, max {max(held):.2f} s "
        f"(baseline, no child: p50 {statistics.median(plain):.3f} s, max {max(plain):.3f} s; "
        f"target < 3 s)"
    )
    plain_ms, pdeath_ms = spawn_cost(100 if args.quick else 300)
    print(
        f"  agent spawn: {plain_ms:.2f} ms plain, {pdeath_ms:.2f} ms with a parent-death "
        f"preexec_fn ({pdeath_ms / plain_ms:.1f}x): agents go without it, tail-events has it"
    )
    if max(held) >= 3.0:
        print("MISSED: agent exit -> next batch with a child holding stdout, target < 3 s")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
