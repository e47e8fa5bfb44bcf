"""`nox -s bench` (watching a running instance): what the HTTP side costs, against the same
measure without it, in the same run.

  1. dispatch latency (event written -> agent started), p50 and p99: ghit-work with `http`
     and 50 clients polling /api/v1/state 10 times a second each, against ghit-work with no
     client (target: p99 ratio <= 1.2), and against ghit-work while the same clients poll
     another server on this machine: the clients' own CPU is then the same on both sides, so
     that ratio is what the HTTP side itself costs dispatch;
  2. start-up to tail-events with `http` against without, and both against importing
     reactivex and jinja2 then starting the same command (timed to the same point, as in
     bench.py; target: <= 1.5x without http).
Options: --quick. Exit status 1 when a figure misses its target.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import Figures, import_seconds, latencies, machine, start_up_seconds

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args, _ = parser.parse_known_args()
    count = 60 if args.quick else 500
    print("watching: the HTTP side's cost", flush=True)
    print(machine(), flush=True)
    figures = Figures()
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
        mine, same = at(polled, 99), at(loaded, 99)
        figures.add(
            "dispatch latency p99 with 50 pollers, ms (vs the same pollers on another server)",
            f"{mine:.2f}",
            f"{same:.2f}",
            f"{mine / same:.2f}x",
            "<= 1.2x",
            mine / same <= 1.2,
        )
        print(f"  answers to the pollers by status: {answered}")
        repeats = 3 if args.quick else 7
        plain = start_up_seconds(root, repeats, http=False)
        served = start_up_seconds(root, repeats, http=True)
        # Timed as ghit-work is: exec to the same command's first instruction (bench.py).
        base = import_seconds(root, repeats)
        print(
            f"  start-up to tail-events: {plain * 1000:.0f} ms without http ({plain / base:.2f}x "
            f"importing reactivex+jinja2, {base * 1000:.0f} ms; target <= 1.5x), "
            f"{served * 1000:.0f} ms with http ({served / base:.2f}x)"
        )
        figures.add(
            "start-up to tail-events without http, ms (vs importing reactivex+jinja2)",
            f"{plain * 1000:.0f}",
            f"{base * 1000:.0f}",
            f"{plain / base:.2f}x",
            "<= 1.5x",
            plain / base <= 1.5,
        )
        figures.add(
            "start-up to tail-events with http, ms (vs importing reactivex+jinja2)",
            f"{served * 1000:.0f}",
            f"{base * 1000:.0f}",
            f"{served / base:.2f}x",
            "reference (aiohttp's import)",
            None,
        )
    return figures.report()


if __name__ == "__main__":
    sys.exit(main())
