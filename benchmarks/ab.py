"""Catch-up A/B: ghit-work at another revision, ghit-work here, and the plain loop, in turn.

    python benchmarks/ab.py REV [--rounds 11] [--events 100000]

Each round runs the bench's catch-up (its corpus, 20 agents, `--drain`, state dir on, every
delivery verified) with ghit-work from REV (its `ghitwork/` taken with `git archive`, first
on PYTHONPATH, tail-events' stand-in included), then with this working tree, then
benchmarks/baseline_loop.py, so a noisy machine's drift falls on all three alike. Prints, per
side, the median wall time and its ratio to the loop's, the process's own CPU time, its
children's (tail-events and the agents), and the runs. Not part of `nox -s bench`: it
compares revisions, for a change's closing note.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import ENV, replaying, runs_of, verify
from data import expected, make_agents, make_events, write_events

HERE = Path(__file__).resolve().parent
LAUNCHER = """#!{python}
import importlib, sys
for module in {modules!r}:
    try:
        main = importlib.import_module(module).main
        break
    except ImportError:
        continue
sys.exit(main())
"""
LAUNCHERS = {
    "ghit-work": ("ghitwork.app.entry", "ghitwork.entry"),
    "ghit-work-replay": ("ghitwork.source.replay", "ghitwork.replay"),
}
# Runs a program as `python -c`, then prints its own and its children's CPU time at exit.
TIMED = """import atexit, os, runpy, sys
def report():
    t = os.times()
    print(f"ab-cpu {t.user + t.system} {t.children_user + t.children_system}", file=sys.stderr)
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(wall, own CPU, children's CPU) of `python argv[0] argv[1:]` run to its end."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", TIMED, *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    own, children = next(
        line.split()[1:] for line in done.stderr.splitlines() if line.startswith("ab-cpu ")
    )
    return wall, float(own), float(children)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the other revision (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ghit-work-ab-"))
    try:
        other = root / "other"
        other.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.rev, "ghitwork"], cwd=HERE.parent, capture_output=True
        )
        if archive.returncode != 0:
            raise SystemExit(f"git archive {args.rev}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(other)], input=archive.stdout, check=True)
        events = make_events(args.events)
        events_file = root / "events.jsonl"
        write_events(events_file, events)
        agents = make_agents(20)
        want = expected(events, agents)
        # Both sides start ghit-work and its replay stand-in through launchers that import
        # whichever layout PYTHONPATH gives (the package moved into subpackages: the
        # installed console scripts name the new module paths only).
        launchers = root / "bin"
        launchers.mkdir()
        for name, modules in LAUNCHERS.items():
            script = launchers / name
            script.write_text(LAUNCHER.format(python=sys.executable, modules=modules))
            script.chmod(0o755)
        work = replaying(root, "catchup", agents, events_file, str(launchers / "ghit-work-replay"))
        agents_file = root / "agents.json"
        agents_file.write_text(json.dumps(agents))
        drain = [str(launchers / "ghit-work"), "--drain", "--log-level", "warning"]
        loop = [str(HERE / "baseline_loop.py"), str(agents_file), str(events_file)]
        sides = {
            args.rev: {**ENV, "PYTHONPATH": str(other)},
            "here": {k: v for k, v in ENV.items() if k != "PYTHONPATH"},
        }
        figures: dict[str, list[tuple[float, float, float, int]]] = {s: [] for s in sides}
        figures["loop"] = []
        for env in sides.values():  # a first run each, uncounted: bytecode is written then
            work.reset()
            timed(drain, work.path, env)
        for round_ in range(args.rounds):
            for side, env in sides.items():
                work.reset()
                wall, own, children = timed(drain, work.path, env)
                verify(work, want)
                figures[side].append((wall, own, children, runs_of(work)))
            figures["loop"].append((*timed(loop, root, ENV), 0))
            print(f"  round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
        base = statistics.median(f[0] for f in figures["loop"])
        print(f"{args.events:,} events, 20 agents, {args.rounds} rounds; medians")
        print("| | wall | vs loop | own CPU | children's CPU | runs |\n|---|---|---|---|---|---|")
        for side, rows in figures.items():
            wall, own, children = (statistics.median(r[i] for r in rows) for i in range(3))
            runs = sorted(r[3] for r in rows)
            shown = (
                f"median {statistics.median(runs):.0f} ({runs[0]}-{runs[-1]})" if any(runs) else "-"
            )
            print(
                f"| {side} | {wall:.3f} s | {base / wall:.2f} | {own:.2f} s | {children:.2f} s "
                f"| {shown} |"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
