"""`nox -s bench`: ghit-work's speed and cost, each against a baseline measured in the same run.

Prints one table (median over repeats, the figure against its baseline, target, met). Figures:
  1. catch-up throughput (100,000 recorded events, 20 agents matching ~5% each, --drain),
     against a plain Python loop and jq doing the same matching (both baselines' (event,
     agent) pairs are checked against ghit-work's deliveries);
  2. dispatch latency back to back, event written to the stream -> agent process started,
     against starting the same command directly from Python (live streams: live.py);
  3. idle CPU over 30 s with 20 agents, without and with --tui (in tmux);
  4. peak RSS idle and with 100,000 events queued for busy agents;
  5. start-up, exec -> tail-events started, against a Python importing reactivex and jinja2
     then starting the same command, timed to the same point;
  6. the cost curve: time per delivery and per run, and memory, as events grow 1k -> 100k
     and agents 20 -> 500;
  7. the catch-up with `conversations = "thread"` against agent mode: the intake (every event
     read, routed, journaled and queued) and the whole drain.
Options: --quick (fewer events and repeats, for a smoke run), --only NAME[,NAME]
(catchup,threads,latency,idle,queued,startup,curve). Exit status 1 when a figure misses its
target.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from data import covering, expected, make_agents, make_events, write_config, write_events

BIN = Path(sys.executable).parent
GHIT_WORK = str(BIN / "ghit-work")
REPLAY = str(BIN / "ghit-work-replay")
# As users run it: buffered output, and bytecode cached after the first start.
ENV = {
    k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")
}
# Each run appends its batch to $RECORD and a line to $RECORD.runs (a shell builtin: no exec).
RECORD_CMD = ["sh", "-c", 'cat >> "$RECORD"; echo >> "$RECORD.runs"']
LATENCY_AGENT = ["sh", "-c", 'date +%s.%N >> "$RECORD"; cat > /dev/null']  # notes its start
DRAIN_EVENTS = 10_000  # the thread-mode drain's corpus (every run included)
CURVE: list[tuple[int, int, int, int, float, float]] = []  # events, agents, deliveries, runs, s, MB


def machine() -> str:
    """What the figures were measured on, and how busy it was (these VMs are shared: the
    load average says whether the run's neighbours weighed on it)."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {platform.node()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}; load average {load}"
    )


class Figures:
    """The figures of one run, each with its baseline and target, and whether it met it
    (None: a reference, no target). `report()` prints the table and says which missed:
    its value is the exit status (1 when any did)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, bool | None]] = []

    def add(
        self, name: str, value: str, baseline: str, ratio: str, target: str, met: bool | None
    ) -> None:
        self.rows.append((name, value, baseline, ratio, target, met))
        verdict = "" if met is None else ("; met" if met else "; MISSED")
        print(
            f"  {name}: {value} (baseline {baseline}; {ratio}; target {target}{verdict})",
            flush=True,
        )

    def report(self) -> int:
        print(f"\n{machine()}")
        print(
            "\n| measure | ghit-work | baseline | against it | target | met |\n"
            "|---|---|---|---|---|---|"
        )
        for name, value, baseline, ratio, target, met in self.rows:
            shown = "-" if met is None else ("yes" if met else "**no**")
            print(f"| {name} | {value} | {baseline} | {ratio} | {target} | {shown} |")
        missed = [row[0] for row in self.rows if row[5] is False]
        for name in missed:
            print(f"MISSED: {name}", flush=True)
        return 1 if missed else 0


FIGURES = Figures()


def row(
    name: str, value: str, baseline: str, ratio: str, target: str, met: bool | None = None
) -> None:
    FIGURES.add(name, value, baseline, ratio, target, met)


def median_time(run: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def current_rss_mb(pid: int) -> float:
    """VmRSS: what the process holds now (VmHWM is the most it ever held)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Workdir:
    def __init__(self, root: Path, name: str) -> None:
        self.path = root / name
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        self.records = self.path / "records"
        self.records.mkdir()

    def reset(self) -> None:
        shutil.rmtree(self.path / ".ghit-work", ignore_errors=True)
        shutil.rmtree(self.records)
        self.records.mkdir()


def replaying(
    root: Path,
    name: str,
    agents: list[dict[str, Any]],
    events_file: Path,
    replay: str = REPLAY,
    cmd: list[str] = RECORD_CMD,
) -> Workdir:
    """A workdir whose config replays `events_file` to `agents`, each recording its runs."""
    work = Workdir(root, name)
    write_config(
        work.path / "ghit-work.toml", agents, [replay, str(events_file)], cmd, work.records
    )
    return work


def run_drain(work: Workdir, sample_rss: bool = False) -> tuple[float, float]:
    """ghit-work --drain in `work`: (seconds, peak RSS MB)."""
    work.reset()
    started = time.perf_counter()
    process = subprocess.Popen(
        [GHIT_WORK, "--drain", "--log-level", "warning"],
        cwd=work.path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak = 0.0
    if sample_rss:
        while process.poll() is None:
            peak = max(peak, peak_rss_mb(process.pid))
            time.sleep(0.05)
    _, err = process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"ghit-work failed ({process.returncode}): {err.decode()[-2000:]}")
    return elapsed, peak


def runs_of(work: Workdir) -> int:
    return sum(len(p.read_text().splitlines()) for p in work.records.glob("*.runs"))


def verify(work: Workdir, want: dict[str, list[int]], ordered: bool = True) -> None:
    """Each agent got exactly its events, in order (`ordered`: one conversation per agent;
    in thread mode its conversations' runs interleave, so each event exactly once)."""
    for name, ids in want.items():
        path = work.records / name
        got = [int(x) for x in path.read_text().split()] if path.exists() else []
        if (got if ordered else sorted(got)) != ids:
            raise SystemExit(f"{name}: delivered {len(got)} events, expected {len(ids)} in order")


def jq_program(agents: list[dict[str, Any]]) -> str:
    def covers(scopes: list[str]) -> str:
        tests = []
        for scope in scopes:
            form, _, rest = scope.partition(":")
            if form == "team":
                tests.append(
                    f'(. as $s | ($s | startswith("repo:teams/{rest}/")) or '
                    f'($s | startswith("thread:teams/{rest}/")))'
                )
            elif form == "repo":
                tests.append(f'(. == "{scope}" or startswith("thread:{rest}/"))')
            tests.append(f'(. == "{scope}")')
        return " or ".join(tests)

    parts = []
    for agent in agents:
        kinds = " or ".join(f'.kind == "{k}"' for k in agent["kinds"])
        parts.append(
            f'(if ({kinds}) and .actor_user_username != "{agent["username"]}" and '
            f'(any(.scopes[]; {covers(agent["scopes"])})) then "\\(.id) {agent["name"]}" '
            f"else empty end)"
        )
    return ", ".join(parts)


def pairs_of(text: str) -> list[tuple[str, int]]:
    """`id agent` lines (the baselines' output) as sorted (agent, id) pairs."""
    out = []
    for line in text.splitlines():
        ident, name = line.split()
        out.append((name, int(ident)))
    return sorted(out)


def wanted_pairs(want: dict[str, list[int]]) -> list[tuple[str, int]]:
    return sorted((name, ident) for name, ids in want.items() for ident in ids)


def catch_up(root: Path, events: list[dict[str, Any]], events_file: Path, repeats: int) -> None:
    print("1. catch-up throughput", flush=True)
    agents = make_agents(20)
    want = expected(events, agents)
    work = replaying(root, "catchup", agents, events_file)
    agents_file = work.path / "agents.json"
    agents_file.write_text(json.dumps(agents))
    loop_out = work.path / "loop.out"
    loop = [
        sys.executable,
        str(Path(__file__).parent / "baseline_loop.py"),
        str(agents_file),
        str(events_file),
    ]
    # Each repeat runs ghit-work, then the loop: the machine's drift (these VMs vary by 10-15%
    # over minutes) falls on both sides alike rather than on one side's three runs.
    times, runs, loop_times = [], [], []
    for _ in range(repeats):
        elapsed, _ = run_drain(work)
        verify(work, want)
        times.append(elapsed)
        runs.append(runs_of(work))
        with loop_out.open("wb") as out:
            started = time.perf_counter()
            subprocess.run(loop, env=ENV, stdout=out, check=True)
            loop_times.append(time.perf_counter() - started)
        # The baseline's own answer is checked too: the same (event, agent) pairs as
        # ghit-work delivered (verify: exactly `want`, in order, per agent).
        if pairs_of(loop_out.read_text()) != wanted_pairs(want):
            raise SystemExit("catch-up: the plain loop's pairs differ from ghit-work's deliveries")
    ours, base = statistics.median(times), statistics.median(loop_times)
    deliveries = sum(len(ids) for ids in want.values())
    print(f"  {deliveries:,} deliveries, {statistics.median(runs):.0f} runs (median)")
    count = len(events)
    row(
        "catch-up, events/s (vs plain Python loop)",
        f"{count / ours:,.0f}",
        f"{count / base:,.0f}",
        f"{base / ours:.2f}x",
        "ratio >= 1.0",
        base / ours >= 1.0,
    )
    if shutil.which("jq"):
        program = jq_program(agents)
        jq_out = work.path / "jq.out"

        def jq() -> None:
            with events_file.open("rb") as handle, jq_out.open("wb") as out:
                subprocess.run(["jq", "-r", program], stdin=handle, stdout=out, check=True)

        jq_time = median_time(jq, 1)
        if pairs_of(jq_out.read_text()) != wanted_pairs(want):
            raise SystemExit("catch-up: jq's pairs differ from ghit-work's deliveries")
        row(
            "catch-up, events/s (vs jq, reference)",
            f"{count / ours:,.0f}",
            f"{count / jq_time:,.0f}",
            f"{jq_time / ours:.2f}x",
            "reference only",
        )


def thread_mode(agents: list[dict[str, Any]], concurrency: int = 4) -> list[dict[str, Any]]:
    return [
        {**agent, "options": {"conversations": "thread", "concurrency": concurrency}}
        for agent in agents
    ]


def conversations_of(events: list[dict[str, Any]], want: dict[str, list[int]]) -> int:
    """(agent, thread) pairs the deliveries fall into: the fewest runs thread mode can make."""
    first = {e["id"]: next((s for s in e["scopes"] if s.startswith("thread:")), "") for e in events}
    return sum(len({first[i] for i in ids}) for ids in want.values())


def last_printed(events: list[dict[str, Any]], agents: list[dict[str, Any]]) -> int:
    """The id of the last event tail-events prints for `agents` (the union of their scopes
    and kinds, whoever the actor): where the cursor ends once everything is read."""
    scopes = {scope for agent in agents for scope in agent["scopes"]}
    kinds = {kind for agent in agents for kind in agent["kinds"]}
    return max(
        int(e["id"])
        for e in events
        if e["kind"] in kinds and any(c in scopes for s in e["scopes"] for c in covering(s))
    )


def intake_seconds(work: Workdir, last: int) -> float:
    """Exec -> every event read, routed, journaled and queued, with every agent's runs held
    on a lock: what the catch-up costs ghit-work itself, whatever the agents make of it. The
    end is the journal's cursor record for `last` (written once the read that brought it is
    routed), watched every 2 ms; status lines at warning, as in the catch-up above."""
    work.reset()
    gate = work.path / "gate"
    gate.touch()
    state = work.path / ".ghit-work"
    # The read's cursor record, or, when the last event went to an agent, its own record.
    marks = (b'"c":%d}' % last, b'"e":{"id": %d,' % last)
    with gate.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.perf_counter()
        process = subprocess.Popen(
            [GHIT_WORK, "--drain", "--log-level", "warning"],
            cwd=work.path,
            env={**ENV, "GATE": str(gate)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        finished = None
        deadline = time.monotonic() + 300
        try:
            while finished is None and process.poll() is None and time.monotonic() < deadline:
                for journal in state.glob("journal-*.jsonl"):
                    with contextlib.suppress(OSError), journal.open("rb") as handle:
                        handle.seek(max(0, journal.stat().st_size - 65536))
                        tail = handle.read()
                        if any(mark in tail for mark in marks):
                            finished = time.perf_counter() - started
                time.sleep(0.002)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=300)
    if finished is None:
        raise SystemExit(f"intake: ghit-work ended ({process.returncode}): {err.decode()[-2000:]}")
    return finished


def catch_up_threads(
    root: Path, events: list[dict[str, Any]], events_file: Path, repeats: int
) -> None:
    """The same catch-up with `conversations = "thread"` (concurrency 4) against agent mode.
    The corpus has a thread scope on every event but the pulls' (three kinds of seven), over
    10 teams x 5 repos x ~400 threads: each agent's events fall into ~1,000 threads."""
    print("7. catch-up, thread mode against agent mode", flush=True)
    agents = make_agents(20)
    held = ["sh", "-c", 'exec flock -s "$GATE" true']
    sides = {
        "agent": replaying(root, "intake-agent", agents, events_file, cmd=held),
        "thread": replaying(root, "intake-thread", thread_mode(agents), events_file, cmd=held),
    }
    times: dict[str, list[float]] = {side: [] for side in sides}
    last = last_printed(events, agents)
    for _ in range(repeats):
        for side, work in sides.items():
            times[side].append(intake_seconds(work, last))
    agent_time = statistics.median(times["agent"])
    thread_time = statistics.median(times["thread"])
    row(
        "catch-up intake, thread mode, events/s (vs agent mode)",
        f"{len(events) / thread_time:,.0f}",
        f"{len(events) / agent_time:,.0f}",
        f"{thread_time / agent_time:.2f}x the time",
        "<= 1.25x",
        thread_time / agent_time <= 1.25,
    )
    # The whole drain, every run included: one run at least per conversation, against the
    # same drain in agent mode. On the first 10,000 events (3,333 conversations): the
    # 100,000 (19,076 conversations) took 11 minutes on 2026-12-03 (performance.md).
    some = events[:DRAIN_EVENTS]
    some_file = root / "drain-events.jsonl"
    write_events(some_file, some)
    some_want = expected(some, agents)
    drains = {}
    for side, listed in (("agent", agents), ("thread", thread_mode(agents))):
        work = replaying(root, f"drain-{side}", listed, some_file)
        elapsed, rss = run_drain(work, sample_rss=True)
        verify(work, some_want, ordered=side == "agent")
        drains[side] = (elapsed, runs_of(work), rss)
    (mine, runs, rss), (base, base_runs, _) = drains["thread"], drains["agent"]
    print(
        f"  whole drain of {len(some):,} events in thread mode: {mine:.2f} s, {runs:,} runs "
        f"({conversations_of(some, some_want):,} conversations), peak {rss:.0f} MB",
        flush=True,
    )
    row(
        f"catch-up drain of {len(some):,} events, thread mode, s (vs agent mode)",
        f"{mine:.2f} ({runs:,} runs)",
        f"{base:.2f} ({base_runs} runs)",
        f"{mine / base:.1f}x the time",
        "reference: a run per conversation",
    )


# The clients run in their own process at the lowest CPU priority: in a deployment they are
# Prometheus and browsers on other machines; here they share two cores with what is measured.
POLLER = """\
import asyncio, os, signal, sys, time
import aiohttp
os.nice(19)
counts = {}
signal.signal(signal.SIGTERM, lambda *_: (print(counts, flush=True), os._exit(0)))

async def client(session, url, until, counts):
    while time.monotonic() < until:
        started = time.monotonic()
        async with session.get(url) as answer:
            await answer.read()
            counts[answer.status] = counts.get(answer.status, 0) + 1
        await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - started)))

async def main(url, seconds):
    until = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session, url, until, counts) for _ in range(50)))
    print(counts, flush=True)

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def latencies(root: Path, count: int, http: bool, elsewhere: str = "") -> tuple[list[float], str]:
    """Seconds from each event written to its agent's start, one event at a time; with
    `http` the clients poll ghit-work, with `elsewhere` (a URL) they poll that instead."""
    work = Workdir(
        root, f"latency-{'http' if http else 'plain'}{'-elsewhere' if elsewhere else ''}"
    )
    fifo = work.path / "stream"
    os.mkfifo(fifo)
    record = work.records / "agent000"
    agent_cmd = LATENCY_AGENT
    agents = make_agents(1)
    config = work.path / "ghit-work.toml"
    write_config(config, agents, ["sh", "-c", 'exec cat "$0"', str(fifo)], agent_cmd, work.records)
    if http:
        config.write_text(
            config.read_text().replace("[ghit-work]", '[ghit-work]\nhttp = "127.0.0.1:0"')
        )
    events = [e for e in make_events(count * 40, seed=5) if expected([e], agents)["agent000"]]
    log = work.path / "stderr.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [GHIT_WORK], cwd=work.path, env=ENV, stdout=subprocess.DEVNULL, stderr=err
        )
    poller = None
    answered = ""
    found = []
    try:
        with fifo.open("w") as stream:
            url = elsewhere
            if http:
                deadline = time.monotonic() + 30
                while not (match := re.search(r"serving on (\S+) ", log.read_text())):
                    if time.monotonic() > deadline:
                        raise SystemExit("latency: the HTTP side never started")
                    time.sleep(0.01)
                url = match.group(1) + "/api/v1/state"
            if url:
                poller = subprocess.Popen(
                    [sys.executable, "-c", POLLER, url, "3600"],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                time.sleep(1.0)  # the clients are polling before the first event
            for index, event in enumerate(events[:count], start=1):
                sent = time.time()
                stream.write(json.dumps(event) + "\n")
                stream.flush()
                deadline = time.monotonic() + 10
                while True:
                    text = record.read_text() if record.exists() else ""
                    if text.count("\n") >= index:
                        found.append(float(text.splitlines()[index - 1]) - sent)
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit("latency: the agent never started")
                    time.sleep(0.0005)
                while log.read_text().count("working -> idle") < index:
                    if time.monotonic() > deadline:
                        raise SystemExit("latency: the run never ended")
                    time.sleep(0.001)
    finally:
        if poller is not None:
            poller.send_signal(signal.SIGTERM)
            answered = poller.communicate(timeout=30)[0].strip()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    return found, answered


def latency(root: Path, count: int) -> None:
    print("2. dispatch latency", flush=True)
    ours, _ = latencies(root, count, http=False)
    work = Workdir(root, "latency-floor")
    floor = []
    env = {**ENV, "RECORD": str(work.path / "floor")}
    for index in range(1, count + 1):
        started = time.time()
        child = subprocess.Popen(LATENCY_AGENT, env=env, stdin=subprocess.PIPE)
        child.communicate(b"prompt\n")
        floor.append(float((work.path / "floor").read_text().splitlines()[index - 1]) - started)

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000

    for q, target in ((50, 1.0), (99, 5.0)):
        mine, base = pct(ours, q), pct(floor, q)
        row(
            f"dispatch latency back to back, p{q}, ms (vs direct start)",
            f"{mine:.2f}",
            f"{base:.2f}",
            f"{mine / base:.2f}x (+{mine - base:.2f} ms)",
            f"+{target:g} ms",
            mine - base <= target,
        )


def idle(root: Path, seconds: float) -> None:
    print("3. idle CPU and 4a. idle memory", flush=True)
    work = Workdir(root, "idle")
    empty = work.path / "none.jsonl"
    empty.touch()
    write_config(
        work.path / "ghit-work.toml",
        make_agents(20),
        [REPLAY, str(empty), "--follow"],
        RECORD_CMD,
        work.records,
    )
    process = subprocess.Popen(
        [GHIT_WORK], cwd=work.path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(2)
        before = cpu_seconds(process.pid)
        time.sleep(seconds)
        used = cpu_seconds(process.pid) - before
        rss = peak_rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    row(
        f"idle CPU over {seconds:g}s, % of a core",
        f"{100 * used / seconds:.2f}",
        "-",
        "-",
        "<= 0.5",
        100 * used / seconds <= 0.5,
    )
    baseline_rss = python_baseline_rss()
    row(
        "peak RSS idle, 20 agents, MB (vs python importing reactivex+jinja2)",
        f"{rss:.1f}",
        f"{baseline_rss:.1f}",
        f"{rss / baseline_rss:.2f}x",
        "<= 60 MB",
        rss <= 60,
    )
    if not shutil.which("tmux"):
        row("idle CPU with --tui", "skipped: no tmux", "-", "-", "<= 3")
        return
    socket = f"ghit-work-bench-{os.getpid()}"
    env_prefix = "unset PYTHONUNBUFFERED; "
    subprocess.run(
        [
            "tmux",
            "-L",
            socket,
            "new-session",
            "-d",
            "-s",
            "b",
            "-x",
            "120",
            "-y",
            "40",
            "-c",
            str(work.path),
            f"{env_prefix}exec {GHIT_WORK} --tui",
        ],
        check=True,
    )
    pid = 0
    try:
        pid = int(
            subprocess.run(
                ["tmux", "-L", socket, "display", "-p", "-t", "b", "#{pane_pid}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        time.sleep(3)
        before = cpu_seconds(pid)
        time.sleep(seconds)
        used = cpu_seconds(pid) - before
    finally:
        # tmux's SIGHUP would only reload ghit-work: stop it for real (and so its replay),
        # then the terminal. A benchmark ends everything it starts, however it exits.
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    row(
        f"idle CPU with --tui over {seconds:g}s, % of a core",
        f"{100 * used / seconds:.2f}",
        "-",
        "-",
        "<= 3",
        100 * used / seconds <= 3,
    )


def python_baseline_rss() -> float:
    """VmHWM of a Python that imports reactivex and jinja2 (per process image: unlike
    ru_maxrss, it does not count what the forked bench process held before exec)."""
    code = (
        "import reactivex, jinja2\nfor line in open('/proc/self/status'):\n"
        "    if line.startswith('VmHWM:'): print(line.split()[1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=ENV
    ).stdout
    return int(out) / 1024


def queued_memory(root: Path, events_file: Path, count: int) -> None:
    print(f"4b. memory with {count:,} events queued", flush=True)
    work = Workdir(root, "queued")
    agents = make_agents(20)
    write_config(
        work.path / "ghit-work.toml",
        agents,
        [REPLAY, str(events_file)],
        ["sleep", "3600"],
        work.records,
    )
    log = work.path / "stderr.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [GHIT_WORK, "--drain"], cwd=work.path, env=ENV, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        deadline = time.monotonic() + 300
        while "tail-events finished" not in log.read_text():
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("queued memory: ghit-work did not read every event")
            time.sleep(0.2)
        rss = peak_rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    row(
        f"peak RSS with {count:,} events queued, MB",
        f"{rss:.1f}",
        "-",
        "-",
        "<= 250 MB",
        rss <= 250,
    )


def start_up_seconds(root: Path, repeats: int, http: bool = False) -> float:
    """Median time from exec to the tail-events command running (it records the time)."""
    work = Workdir(root, f"startup-{'http' if http else 'plain'}")
    stamp = work.path / "started"
    config = work.path / "ghit-work.toml"
    write_config(
        config,
        make_agents(1),
        ["sh", "-c", 'date +%s.%N > "$0"', str(stamp)],
        RECORD_CMD,
        work.records,
    )
    if http:
        config.write_text(
            config.read_text().replace("[ghit-work]", '[ghit-work]\nhttp = "127.0.0.1:0"')
        )
    times = []
    for _ in range(repeats):
        work.reset()
        started = time.time()
        subprocess.run(
            [GHIT_WORK, "--drain"], cwd=work.path, env=ENV, check=True, stderr=subprocess.DEVNULL
        )
        times.append(float(stamp.read_text()) - started)
    return statistics.median(times)


# The start-up baseline: the imports ghit-work cannot do without, then the same tail command
# started the same way (its own session, through a preexec function, as tail-events is), so
# both sides are timed from exec to that command's first instruction, and neither with the
# interpreter's teardown.
IMPORTS = """\
import subprocess, sys
import reactivex, jinja2
subprocess.run(["sh", "-c", 'date +%s.%N > "$0"', sys.argv[1]], start_new_session=True,
               preexec_fn=lambda: None, check=True)
"""


def import_seconds(root: Path, repeats: int) -> float:
    """Median time from exec to the tail command's stamp, for IMPORTS."""
    stamp = root / "imports-started"
    times = []
    for _ in range(repeats):
        started = time.time()
        subprocess.run([sys.executable, "-c", IMPORTS, str(stamp)], env=ENV, check=True)
        times.append(float(stamp.read_text()) - started)
    return statistics.median(times)


def startup(root: Path, repeats: int) -> None:
    print("5. start-up", flush=True)
    mine, base = [], []
    for _ in range(repeats):  # in turn: drift falls on both sides
        mine.append(start_up_seconds(root, 1))
        base.append(import_seconds(root, 1))
    ours, theirs = statistics.median(mine), statistics.median(base)
    row(
        "start-up to tail-events, ms (vs importing reactivex+jinja2, then the same command)",
        f"{ours * 1000:.0f}",
        f"{theirs * 1000:.0f}",
        f"{ours / theirs:.2f}x",
        "ratio <= 1.5",
        ours / theirs <= 1.5,
    )


def curve(root: Path, events: list[dict[str, Any]]) -> None:
    """Catch-ups as events grow (1k -> all) and agents grow (20 -> 500; 20 of them match):
    wall time per delivery and per run, so the cost curve is visible."""
    print("6. cost curve", flush=True)
    sizes = sorted({min(n, len(events)) for n in (1_000, 10_000, len(events))})
    for size in sizes:
        events_file = root / f"curve-{size}.jsonl"
        write_events(events_file, events[:size])
        for count in (20, 100, 500):
            agents = make_agents(count)
            work = replaying(root, f"curve-{size}-{count}", agents, events_file)
            elapsed, rss = run_drain(work, sample_rss=True)
            want = expected(events[:size], agents)
            verify(work, want)
            deliveries = sum(len(ids) for ids in want.values())
            CURVE.append((size, count, deliveries, runs_of(work), elapsed, rss))
            print(f"  {size:,} events, {count} agents: {elapsed:.2f} s, {rss:.0f} MB", flush=True)


def print_curve() -> None:
    print(
        "\n| events | agents | deliveries | runs | seconds | µs per delivery | ms per run "
        "| peak MB |\n|---|---|---|---|---|---|---|---|"
    )
    for size, count, deliveries, runs, elapsed, rss in CURVE:
        print(
            f"| {size:,} | {count} | {deliveries:,} | {runs} | {elapsed:.2f} "
            f"| {elapsed / max(deliveries, 1) * 1e6:.1f} | {elapsed / max(runs, 1) * 1e3:.1f} "
            f"| {rss:.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="catchup,threads,latency,idle,queued,startup,curve")
    args, _ = parser.parse_known_args()
    only = set(args.only.split(","))
    count = 10_000 if args.quick else 100_000
    repeats = 1 if args.quick else 3
    root = Path(tempfile.mkdtemp(prefix="ghit-work-bench-"))
    print(machine(), flush=True)
    started = time.monotonic()
    events = make_events(count)
    events_file = root / "events.jsonl"
    write_events(events_file, events)
    try:
        if "catchup" in only:
            catch_up(root, events, events_file, repeats)
        if "threads" in only:
            catch_up_threads(root, events, events_file, repeats)
        if "latency" in only:
            latency(root, 100 if args.quick else 500)
        if "idle" in only:
            idle(root, 5 if args.quick else 30)
        if "queued" in only:
            queued_memory(root, events_file, count)
        if "startup" in only:
            startup(root, 3 if args.quick else 7)
        if "curve" in only:
            curve(root, events)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if CURVE:
        print_curve()
    print(f"\n({len(events):,} events; total {time.monotonic() - started:.0f} s; `nox -s bench`)")
    return FIGURES.report()


if __name__ == "__main__":
    raise SystemExit(main())
