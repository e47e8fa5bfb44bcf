"""`nox -s bench` (watching a running instance): what the HTTP side costs, against the same
measure without it, in the same run.

  1. dispatch latency (event written -> agent started), p50 and p99: ghit-work with `http`
     and 50 clients polling /api/v1/state 10 times a second each, against ghit-work with no
     client (target: p99 ratio <= 1.2), and against ghit-work while the same clients poll
     another server on this machine: the clients' own CPU is then the same on both sides, so
     that ratio is what the HTTP side itself costs dispatch;
  2. start-up to tail-events with `http` against without, and both against importing
     reactivex and jinja2 (target: <= 1.5x that import without http).
Options: --quick.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import ENV, GHIT_WORK, RECORD_CMD, Workdir, median_time
from data import expected, make_agents, make_events, write_config

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


ELSEWHERE = """\
import os, sys
from aiohttp import web
os.nice(19)
body = open(sys.argv[1], "rb").read()
async def state(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/api/v1/state", state)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
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
    agent_cmd = ["sh", "-c", 'date +%s.%N >> "$RECORD"; cat > /dev/null']
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
                        raise SystemExit("watching: the HTTP side never started")
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
                        raise SystemExit("watching: the agent never started")
                    time.sleep(0.0005)
                while log.read_text().count("working -> idle") < index:
                    if time.monotonic() > deadline:
                        raise SystemExit("watching: the run never ended")
                    time.sleep(0.001)
    finally:
        if poller is not None:
            poller.send_signal(signal.SIGTERM)
            answered = poller.communicate(timeout=30)[0].strip()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    return found, answered


def start_up(root: Path, repeats: int, http: bool) -> float:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args, _ = parser.parse_known_args()
    count = 60 if args.quick else 500
    print("watching: the HTTP side's cost", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        quiet, _ = latencies(root, count, http=False)
        polled, answered = latencies(root, count, http=True)
        body = root / "state.json"
        body.write_bytes(b'{"x": 1}' * 600)
        other = subprocess.Popen([sys.executable, "-c", ELSEWHERE, str(body), "18555"])
        try:
            time.sleep(1.5)
            loaded, _ = latencies(
                root, count, http=False, elsewhere="http://127.0.0.1:18555/api/v1/state"
            )
        finally:
            other.kill()
            other.wait()

        def at(values: list[float], q: int) -> float:
            return statistics.quantiles(values, n=100)[q - 1] * 1000

        for q in (50, 90, 99):
            mine, base, same = at(polled, q), at(quiet, q), at(loaded, q)
            print(
                f"  dispatch latency p{q}: {mine:.2f} ms with 50 clients polling /api/v1/state "
                f"10/s each; {base:.2f} ms with none (ratio {mine / base:.2f}); {same:.2f} ms "
                f"while they poll another server (ratio {mine / same:.2f}; target p99 <= 1.2)"
            )
        print(f"  answers to the pollers by status: {answered}")
        repeats = 3 if args.quick else 7
        plain = start_up(root, repeats, http=False)
        served = start_up(root, repeats, http=True)

        def imports() -> None:
            subprocess.run([sys.executable, "-c", "import reactivex, jinja2"], env=ENV, check=True)

        base = median_time(imports, repeats)
        print(
            f"  start-up to tail-events: {plain * 1000:.0f} ms without http ({plain / base:.2f}x "
            f"importing reactivex+jinja2, {base * 1000:.0f} ms; target <= 1.5x), "
            f"{served * 1000:.0f} ms with http ({served / base:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
