"""`nox -s bench` (notifications): a receiver that hangs, or answers 500, never delays dispatch.

Three ghit-work instances run at once, each following its own stream (`ghit-work-replay
--follow`), with the same two agents: `a`, whose start is measured (bash's $EPOCHREALTIME, no
exec), and `f`, which fails every batch at once (`run_attempts = 1`), so that every event
makes a dead letter, and so a notification:

  - none:    no `[[notify]]` (the baseline);
  - hanging: `[[notify]]` on dead letters to a webhook on 127.0.0.1 that accepts the request
             and never answers (each send waits for apprise's 4 s timeout, then backs off);
  - failing: the same to a webhook that answers 500 at once (retried with backoff).

Events are written at fixed gaps (50 ms, then 200 ms), the three streams a third of a gap
apart and each first in turn, so the machine's drift falls on all three alike. Reported: p50
and p99 of (agent `a` started - event written) for each, against none; target: p99 within
+5 ms of none (p50 is shown for reference). Checked: every event reached `a` once in every
instance, and the receivers were really sent to (a bench whose notifications never left
would measure nothing). Options: --quick (fewer events). Exit status 1 when a figure misses
its target or a check fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench import Figures
from live import AGENT, Stream, agent_table, pct

FAIL = ["bash", "-c", "read -r ids; exit 1"]  # every batch fails at once: a dead letter
SCOPE = "repo:teams/live/repo0"


class Receiver:
    """A webhook on 127.0.0.1: `hang` (reads the request, never answers) or `fail` (500)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests += 1
                if receiver.mode == "hang":
                    receiver.release.wait(120)
                    return
                self.send_response(500)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def table(self) -> list[str]:
        port = self.server.server_address[1]
        return [
            "[[notify]]",
            f'url = "json://127.0.0.1:{port}/hook"',
            'on = ["dead-letter", "internal-error"]',
        ]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def agents(stream: Stream) -> list[list[str]]:
    return [
        agent_table("a", SCOPE, AGENT, stream.record, {}),
        agent_table("f", SCOPE, FAIL, stream.dir / "record-f", {"run_attempts": 1}),
    ]


def outbox_pending(stream: Stream) -> int:
    path = stream.dir / ".ghit-work" / "notify" / "outbox.jsonl"
    if not path.exists():
        return 0
    pending: set[int] = set()
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "add" in record:
            pending.add(record["add"]["id"])
        elif "done" in record:
            pending.discard(record["done"])
    return len(pending)


def measure(root: Path, figures: Figures, quick: bool) -> bool:
    """The figures; False when a check failed."""
    hanging, failing = Receiver("hang"), Receiver("fail")
    none = Stream(root, "none")
    hung = Stream(root, "hanging")
    fails = Stream(root, "failing")
    streams = (none, hung, fails)
    ok = True
    try:
        none.ghit_work(agents(none))
        hung.ghit_work([*agents(hung), hanging.table()])
        fails.ghit_work([*agents(fails), failing.table()])
        ident = 0

        def burst(gap: float, count: int) -> list[int]:
            nonlocal ident
            ids = list(range(ident + 1, ident + count + 1))
            ident += count
            began = time.monotonic() + 0.05
            for index, number in enumerate(ids):
                turn = index % len(streams)  # each goes first in turn: no order bias
                for offset, stream in enumerate(streams[turn:] + streams[:turn]):
                    at = began + index * gap + offset * gap / len(streams)
                    delay = at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    stream.write(number, f"teams/live/repo0/{number}")
            for stream in streams:
                stream.wait_for(ids)
            return ids

        time.sleep(3.0)  # started, tail-events running, apprise loaded (in the worker)
        burst(0.1, 5)  # warm-up, not counted
        measured: list[int] = []
        for gap, few, many in ((0.05, 40, 300), (0.2, 15, 100)):
            count = few if quick else many
            print(f"  gap {gap * 1000:g} ms: {count} events each", flush=True)
            measured += burst(gap, count)
        base = none.latencies(measured)
        for stream, receiver in ((hung, hanging), (fails, failing)):
            ours = stream.latencies(measured)
            for q in (50, 99):
                mine, floor = pct(ours, q), pct(base, q)
                ratio = f"x{mine / floor:.2f} (+{mine - floor:.2f} ms)" if floor else "-"
                figures.add(
                    f"event -> agent start, receiver {stream.name}, p{q}, ms (vs no notify)",
                    f"{mine:.2f}",
                    f"{floor:.2f}",
                    ratio,
                    "+5 ms" if q == 99 else "reference",
                    mine - floor <= 5.0 if q == 99 else None,
                )
            pending = outbox_pending(stream)
            print(
                f"  {stream.name}: {receiver.requests} request(s) to the receiver, "
                f"{pending} notification(s) still in the outbox",
                flush=True,
            )
            if receiver.requests == 0 or pending == 0:
                print(f"CHECK FAILED: {stream.name}: the notifications never met the receiver")
                ok = False
        if outbox_pending(none) or (none.dir / ".ghit-work" / "notify").exists():
            print("CHECK FAILED: none: an outbox without [[notify]]")
            ok = False
    finally:
        for stream in streams:
            stream.stop()
        hanging.close()
        failing.close()
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (a smoke run)")
    args = parser.parse_args()
    figures = Figures()
    root = Path(tempfile.mkdtemp(prefix="ghit-work-notify-bench-"))
    try:
        print("notifications: event -> agent start with a hanging or failing receiver", flush=True)
        checked = measure(root, figures, args.quick)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    status = figures.report()
    return status if checked else 1


if __name__ == "__main__":
    sys.exit(main())
