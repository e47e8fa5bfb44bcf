"""RSS over several loads of new conversations on one instance (not part of `nox -s bench`):
the memory part of live.py's conversations at scale, repeated with 1,000 new threads each
round. Prints, per round, the RSS before it, with the 1,000 conversations holding queued
events (their agents held), the peak, and once idle again (after IDLE_KEPT).

    python benchmarks/rss_rounds.py [ROUNDS]
"""

from __future__ import annotations

import fcntl
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench import current_rss_mb, peak_rss_mb
from live import GATED, Stream, agent_table, routed

from ghitwork.observe.agents import IDLE_KEPT

AGENTS, PER_AGENT, RATE = 20, 50, 200.0


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rng = random.Random(3)
    root = Path(tempfile.mkdtemp(prefix="ghit-work-rss-rounds-"))
    stream = Stream(root, "rss")
    gate = stream.dir / "gate"
    gate.touch()
    options: dict[str, Any] = {"conversations": "thread", "concurrency": 4, "env": {"GATE": gate}}
    tables = [
        agent_table(
            f"a{a:02d}",
            f"repo:teams/scale/repo{a}",
            GATED,
            stream.dir / f"record-{a:02d}",
            dict(options),
        )
        for a in range(AGENTS)
    ]
    held = gate.open("rb")
    try:
        stream.ghit_work(tables)
        time.sleep(2.0)
        ident = 1
        for round_ in range(rounds):
            fcntl.flock(held, fcntl.LOCK_EX)
            threads = [
                f"teams/scale/repo{a}/{n + round_ * PER_AGENT}"
                for n in range(1, PER_AGENT + 1)
                for a in range(AGENTS)
            ]
            on: list[str] = []
            for _ in range(2):  # every thread twice: each conversation has a queued event
                rng.shuffle(threads)
                on += threads
            ids = list(range(ident, ident + len(on)))
            ident += len(on)
            before = current_rss_mb(stream.pid)
            began = time.monotonic() + 0.05
            for index, (number, where) in enumerate(zip(ids, on, strict=True)):
                time.sleep(max(0.0, began + index / RATE - time.monotonic()))
                stream.write(number, where)
            routed(stream, ids[-1])
            loaded = current_rss_mb(stream.pid)
            fcntl.flock(held, fcntl.LOCK_UN)
            stream.wait_for(ids, timeout=300)
            peak = peak_rss_mb(stream.pid)
            time.sleep(IDLE_KEPT + 4.0)
            idle = current_rss_mb(stream.pid)
            print(
                f"round {round_ + 1}: before {before:.1f} MB, queued {loaded:.1f}, "
                f"peak {peak:.1f}, idle again {idle:.1f}",
                flush=True,
            )
    finally:
        stream.stop()
        held.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
