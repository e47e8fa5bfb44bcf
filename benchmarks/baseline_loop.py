"""Baseline for the catch-up benchmark: a plain loop, json.loads per line, the same matching,
printing `id agent` pairs. Usage: baseline_loop.py AGENTS.json EVENTS.jsonl"""

from __future__ import annotations

import atexit
import json
import os
import sys


def covering(scope: str) -> list[str]:
    # Written out again on purpose (data.py has the same): the baseline stands alone.
    form, _, rest = scope.partition(":")
    out = [scope]
    locator = rest.rpartition("/")[0] if form == "thread" else rest if form == "repo" else ""
    if form == "thread":
        out.append(f"repo:{locator}")
    parts = locator.split("/")
    if len(parts) >= 3 and parts[0] == "teams":
        out.append(f"team:{parts[1]}")
    return out


def main() -> None:
    with open(sys.argv[1]) as handle:
        agents = [
            (a["name"], a["username"], set(a["scopes"]), set(a["kinds"])) for a in json.load(handle)
        ]
    out = sys.stdout
    with open(sys.argv[2], "rb") as events:
        for line in events:
            event = json.loads(line)
            kind, actor = event["kind"], event["actor_user_username"]
            covers = {c for s in event["scopes"] for c in covering(s)}
            for name, username, scopes, kinds in agents:
                if kind in kinds and actor != username and covers & scopes:
                    out.write(f"{event['id']} {name}\n")
    # Ended as ghit-work ends (app/entry.py's exit_now): atexit handlers run (ab.py's CPU
    # report is one), output flushed, no interpreter teardown: neither side is timed with it.
    atexit._run_exitfuncs()
    out.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
