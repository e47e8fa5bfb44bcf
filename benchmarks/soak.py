"""Soak: a minute of random tail-events crashes, agent failures (retried), reloads and one kill -9.

Run with `nox -s bench` (or `python benchmarks/soak.py [SECONDS]`). It reports whether every
matched event reached its agent at least once, whether any batch was out of order, and how many
events were redelivered. Exit status 1 if an event was lost or a batch out of order.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from data import covering

BIN = Path(sys.executable).parent
AGENTS = {
    "team": (["team:ghit"], ["reply-created", "pull-created"]),
    "repo": (["repo:teams/ghit/r1"], ["reply-created", "thread-created"]),
    "thread": (["thread:teams/ghit/r2/1"], ["reply-created"]),
    "mentions": (["user:mentions"], ["user-mention"]),
    "busy": (["team:ghit"], ["thread-created", "pull-created", "reply-created"]),
}
ACTORS = ["alice", "bob", "team", "repo", "busy", None]
SCOPES = [
    "thread:teams/ghit/r1/1",
    "thread:teams/ghit/r1/2",
    "thread:teams/ghit/r2/1",
    "repo:teams/ghit/r1",
    "repo:teams/ghit/r3",
    "user:mentions",
    "thread:teams/other/x/1",
]
KINDS = ["reply-created", "thread-created", "pull-created", "user-mention", "pull-review-created"]

AGENT = """\
import json, os, random, sys, time
prompt = sys.stdin.read()
flag, _, ids = prompt.partition(":")
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({"agent": os.environ["GHIT_WORK_AGENT"], "again": flag == "True",
                        "ids": [int(i) for i in ids.split()]}) + "\\n")
time.sleep(random.uniform(0, 0.3))
sys.exit(1 if random.random() < 0.1 else 0)
"""

TAIL = """\
n=$(( $(od -An -N1 -tu1 /dev/urandom) % 40 + 1 ))
exec {replay} "$@" --follow --exit-after "$n" --exit-status 1
"""


def expected(events: list[dict[str, object]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {name: [] for name in AGENTS}
    for event in events:
        for name, (scopes, kinds) in AGENTS.items():
            if (
                event["kind"] in kinds
                and event["actor_user_username"] != name
                and any(
                    cover in scopes
                    for cover in covering(str(event["scopes"][0]))  # type: ignore[index]
                )
            ):
                out[name].append(int(event["id"]))  # type: ignore[call-overload]
    return out


def write_config(path: Path, record: Path, extra_scope: int) -> None:
    lines = [
        "[ghit-work]",
        'tail_cmd = ["sh", "tail.sh", "events.jsonl"]',
        'retry = "1m"',
        "limit = 3",
        'run_backoff = "0.5s"',  # failed batches are retried within the soak
        'agent_prompt = "{{ redelivered }}:{% for e in events %}{{ e.id }} {% endfor %}"',
    ]
    for name, (scopes, kinds) in AGENTS.items():
        lines += [
            f"[agents.{name}]",
            f'cmd = ["{sys.executable}", "agent.py"]',
            f'username = "{name}"',
            f"event_scopes = {json.dumps(scopes)}",
            f"event_kinds = {json.dumps(kinds)}",
            f'env = {{ RECORD = "{record}" }}',
        ]
    # A bystander whose scope changes at each reload: the union changes, tail-events restarts.
    lines += [
        "[agents.bystander]",
        'cmd = ["true"]',
        'username = "bystander"',
        f'event_scopes = ["repo:teams/nobody/r{extra_scope}"]',
        'event_kinds = ["none"]',
    ]
    path.write_text("\n".join(lines) + "\n")


def main(seconds: float = 60.0) -> int:
    rng = random.Random(7)
    root = Path(tempfile.mkdtemp(prefix="ghit-work-soak-"))
    (root / "agent.py").write_text(AGENT)
    (root / "tail.sh").write_text(TAIL.format(replay=BIN / "ghit-work-replay"))
    events_file, record = root / "events.jsonl", root / "record.jsonl"
    events_file.touch()
    write_config(root / "ghit-work.toml", record, 0)
    log = (root / "ghit-work.log").open("a")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(BIN / "ghit-work")], cwd=root, stderr=log, stdin=subprocess.DEVNULL
        )

    written: list[dict[str, object]] = []
    stop_writing = threading.Event()

    def writer() -> None:
        ident = 0
        while not stop_writing.is_set():
            ident += 1
            event = {
                "id": ident,
                "kind": rng.choice(KINDS),
                "actor_user_username": rng.choice(ACTORS),
                "scopes": [rng.choice(SCOPES)],
                "summary": {"web_url": "https://g/x", "api_url": "https://g/api/x"},
            }
            with events_file.open("a") as handle:
                handle.write(json.dumps(event) + "\n")
            written.append(event)
            time.sleep(rng.uniform(0, 0.03))

    process = start()
    thread = threading.Thread(target=writer)
    thread.start()
    began, reloads, killed = time.monotonic(), 0, False
    while time.monotonic() - began < seconds:
        time.sleep(rng.uniform(3, 6))
        if not killed and time.monotonic() - began > seconds / 2:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed = True
            process = start()
            continue
        reloads += 1
        write_config(root / "ghit-work.toml", record, reloads)
        process.send_signal(signal.SIGHUP)
    stop_writing.set()
    thread.join()

    want = expected(written)

    def delivered() -> dict[str, list[list[int]]]:
        out: dict[str, list[list[int]]] = {name: [] for name in AGENTS}
        if record.exists():
            for line in record.read_text().splitlines():
                run = json.loads(line)
                out[run["agent"]].append(run["ids"])
        return out

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = delivered()
        if all(set(want[n]) <= {i for batch in got[n] for i in batch} for n in AGENTS):
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=60)
    log.close()

    got = delivered()
    text = (root / "ghit-work.log").read_text()
    lost = {n: sorted(set(want[n]) - {i for b in got[n] for i in b}) for n in AGENTS}
    unordered = sum(1 for n in AGENTS for b in got[n] if b != sorted(b))
    counts = {n: len([i for b in got[n] for i in b]) for n in AGENTS}
    redelivered = sum(counts[n] - len(set(want[n])) for n in AGENTS)
    print(
        f"soak: {seconds:.0f}s, {len(written)} events written, "
        f"{sum(len(v) for v in want.values())} matched deliveries expected"
    )
    print(
        f"  tail-events restarts: {text.count('tail-events: started')}, "
        f"reloads: {text.count('config reloaded')}, kill -9: {int(killed)}, "
        f"agent failures: {text.count('exit 1 after')}"
    )
    print(
        f"  lost: {sum(len(v) for v in lost.values())}, batches out of order: {unordered}, "
        f"redelivered (delivered more than once: failed runs' retries, runs a kill -9 cut): "
        f"{redelivered}, final exit status: {status}"
    )
    ok = not any(lost.values()) and unordered == 0 and status == 0
    print(f"  result: {'every matched event reached its agent at least once' if ok else 'FAIL'}")
    if ok:
        shutil.rmtree(root)
    else:
        print(f"  kept {root} for inspection")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0))
