"""`nox -s bench` (recovery): ghit-work killed with kill -9 while 100,000 events are journaled
and queued for 20 agents, then started again on the same state_dir; in agent mode and in
thread mode (`conversations = "thread"`, `concurrency = 4`).

Before the crash every agent's runs are held (a lock the bench holds), so everything read is
queued; the first batches are in flight. After the restart, on the same state_dir:
  - time from exec to the first redelivered run (the agent's first instruction; target
    <= 1 s);
  - time until healthy with every agent working: tail-events running again and each of the
    20 agents in a run (reference);
  - peak RSS after the recovery (VmHWM, sampled until every agent is working again and 2 s
    more, the runs still held as before the crash) against the peak before the crash
    (target: no more).
Every delivery is checked afterwards (agent mode: to the end of the queue): each agent gets
each of its events at least once, and none that is not its own.
Options: --quick (10,000 events), --only agent,thread. Exit status 1 when a figure misses its
target.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench import ENV, GHIT_WORK, REPLAY, Figures, machine, peak_rss_mb, thread_mode
from data import expected, make_agents, make_events, write_config, write_events

# Each run notes its start (bash's $EPOCHREALTIME, its first instruction) and its batch, then
# waits while the bench holds the gate.
AGENT = [
    "bash",
    "-c",
    'echo "$EPOCHREALTIME" >> "$RECORD.starts"; cat >> "$RECORD"; exec flock -s "$GATE" true',
]
# tail-events notes when it starts ($0), then follows the (fully read) file: nothing new.
TAIL = ["bash", "-c", 'echo "$EPOCHREALTIME" >> "$0"; exec "$@" --follow']


def recover(
    root: Path, mode: str, events_file: Path, want: dict[str, list[int]]
) -> dict[str, float]:
    work = root / mode
    work.mkdir()
    records = work / "records"
    records.mkdir()
    gate = work / "gate"
    gate.touch()
    stamp = work / "tail-started"
    agents = make_agents(20)
    if mode == "thread":
        agents = thread_mode(agents)
    config = work / "ghit-work.toml"
    write_config(config, agents, [*TAIL, str(stamp), REPLAY, str(events_file)], AGENT, records)
    env = {**ENV, "GATE": str(gate)}
    held = gate.open("rb")
    fcntl.flock(held, fcntl.LOCK_EX)
    log = (work / "before.log").open("w")
    process = subprocess.Popen(
        [GHIT_WORK, "-c", str(config)], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        last = max(max(ids) for ids in want.values() if ids)
        status = work / ".ghit-work" / "status.json"
        deadline = time.monotonic() + 300
        while True:  # every event read, routed and journaled (the snapshot's cursor)
            try:
                if (json.loads(status.read_text())["stream"].get("cursor") or 0) >= last:
                    break
            except (OSError, ValueError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"recovery ({mode}): the events were never all read")
            time.sleep(0.1)
        time.sleep(1.0)
        before = peak_rss_mb(process.pid)
        in_flight = sum(len(path.read_text().split()) for path in records.glob("*.starts"))
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    # The held runs live on (their own process groups, the gate still held): the new
    # instance ends them first, as it would agents still at work.
    for path in records.glob("*.starts"):
        path.rename(path.with_name(path.name + "-before"))
    for path in records.glob("agent???"):
        path.rename(path.with_name(path.name + ".before"))
    stamp.unlink(missing_ok=True)
    log = (work / "after.log").open("w")
    started = time.time()
    process = subprocess.Popen(
        [GHIT_WORK, "-c", str(config)], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    peak = 0.0
    try:
        deadline = time.monotonic() + 120
        every = None
        while True:
            peak = max(peak, peak_rss_mb(process.pid))
            firsts = [
                float(path.read_text().split()[0])
                for path in records.glob("*.starts")
                if path.read_text().strip()
            ]
            if every is None and len(firsts) == len(want) and stamp.exists():
                every = time.monotonic()
            if every is not None and time.monotonic() > every + 2.0:
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"recovery ({mode}): not every agent worked again")
            time.sleep(0.02)
        first = min(firsts) - started
        healthy = max([*firsts, float(stamp.read_text().split()[0])]) - started
        # Recovered: what it holds is what it held before the crash (every event queued, a
        # batch in flight per run). Then the runs go on (and the prompts of the big batches
        # the restart gathers are another matter: not counted here).
        peak = max(peak, peak_rss_mb(process.pid))
        recovered = peak
        fcntl.flock(held, fcntl.LOCK_UN)
        if mode == "agent":  # to the end: every event delivered at least once
            deadline = time.monotonic() + 300
            while not delivered_all(records, want):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"recovery ({mode}): events lost")
                time.sleep(0.1)
        else:
            check_only_theirs(records, want)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        fcntl.flock(held, fcntl.LOCK_UN)
        held.close()
    print(
        f"  {mode} mode: {in_flight} runs in flight at the crash; first run after "
        f"{first * 1000:.0f} ms, every agent working after {healthy * 1000:.0f} ms; peak "
        f"{before:.1f} MB before, {recovered:.1f} MB after",
        flush=True,
    )
    return {"first": first, "healthy": healthy, "before": before, "after": recovered}


def delivered(records: Path) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for path in records.iterdir():
        name = path.name.split(".")[0]
        if path.suffix in ("", ".before") and name.startswith("agent"):
            out.setdefault(name, set()).update(int(x) for x in path.read_text().split())
    return out


def delivered_all(records: Path, want: dict[str, list[int]]) -> bool:
    got = delivered(records)
    check_only_theirs(records, want, got)
    return all(set(ids) <= got.get(name, set()) for name, ids in want.items())


def check_only_theirs(
    records: Path, want: dict[str, list[int]], got: dict[str, set[int]] | None = None
) -> None:
    for name, ids in (got or delivered(records)).items():
        if not ids <= set(want.get(name, ())):
            raise SystemExit(f"recovery: {name} got events that are not its own")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="agent,thread")
    args, _ = parser.parse_known_args()
    count = 10_000 if args.quick else 100_000
    figures = Figures()
    print(machine(), flush=True)
    root = Path(tempfile.mkdtemp(prefix="ghit-work-recovery-"))
    print(f"3. recovery after kill -9 with {count:,} events queued for 20 agents", flush=True)
    try:
        events = make_events(count)
        events_file = root / "events.jsonl"
        write_events(events_file, events)
        want = expected(events, make_agents(20))
        for mode in args.only.split(","):
            found: dict[str, Any] = recover(root, mode, events_file, want)
            figures.add(
                f"recovery, {mode} mode: exec -> first redelivered run, ms",
                f"{found['first'] * 1000:.0f}",
                "-",
                "-",
                "<= 1000 ms",
                found["first"] <= 1.0,
            )
            figures.add(
                f"recovery, {mode} mode: exec -> healthy, every agent working, ms",
                f"{found['healthy'] * 1000:.0f}",
                "-",
                "-",
                "reference",
                None,
            )
            figures.add(
                f"recovery, {mode} mode: peak RSS after, MB (vs before the crash)",
                f"{found['after']:.1f}",
                f"{found['before']:.1f}",
                f"{found['after'] / found['before']:.2f}x",
                "no more",
                found["after"] <= found["before"],
            )
    finally:
        if not os.environ.get("GHIT_WORK_BENCH_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
    return figures.report()


if __name__ == "__main__":
    sys.exit(main())
