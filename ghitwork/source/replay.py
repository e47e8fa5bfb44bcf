"""A stand-in for `ghit-cli tail-events` that replays a recorded JSONL file of events.

    ghit-work-replay EVENTS.jsonl [--follow] [--scope S]... [--kind K]... [--last-event-id N]

Same filter flags as the real command, filtering like the server: scopes ORed (a team covers
its repos and threads, a repo its threads), kinds ORed, AND between them, only ids above
--last-event-id. Lines that are not events are passed through unchanged, so a recorded file
can also exercise a reader's handling of malformed input. With --follow it keeps watching the
file as it grows, like `tail -f`. A few flags inject faults for tests (--exit-after,
--exit-status, --fail-at-start, --hang, --pretty, --delay).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import orjson

from ghitwork.model.scopes import covering

POLL = 0.05  # seconds between looks at a followed file, where inotify is not to be had
WATCHED = 1.0  # with inotify: a look anyway this often (a change it cannot see)
IN_MODIFY = 0x2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghit-work-replay",
        description="Replay recorded ghit events like `ghit-cli tail-events` (no server needed).",
    )
    parser.add_argument("file", type=Path, help="JSONL file of recorded events")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep reading as the file grows, like tail -f"
    )
    parser.add_argument("--scope", action="append", default=[], help="scope filter, repeatable")
    parser.add_argument(
        "--self",
        dest="self_scope",
        action="store_true",
        help="--scope self (cannot be resolved without a server: matches nothing)",
    )
    parser.add_argument("--team", action="append", default=[], metavar="SLUG")
    parser.add_argument("--repo", action="append", default=[], metavar="LOCATOR")
    parser.add_argument("--thread", action="append", default=[], metavar="LOCATOR/N")
    parser.add_argument("--user", action="append", default=[], metavar="NAME")
    parser.add_argument("--kind", action="append", default=[], help="kind filter, repeatable")
    parser.add_argument("--last-event-id", type=int, default=None, metavar="ID")
    parser.add_argument(
        "--pretty", action="store_true", help="print each event pretty-printed across lines"
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="pause before each event printed",
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument(
        "--exit-after", type=int, default=None, metavar="N", help="exit after printing N events"
    )
    faults.add_argument(
        "--exit-status",
        type=int,
        default=0,
        metavar="STATUS",
        help="status for --exit-after and --fail-at-start (default 0)",
    )
    faults.add_argument(
        "--fail-at-start",
        action="store_true",
        help="print an error and exit at once with --exit-status (or 1)",
    )
    faults.add_argument(
        "--hang", action="store_true", help="at the end of the file, wait (silently) until killed"
    )
    return parser


def scopes_of(args: argparse.Namespace) -> list[str]:
    scopes = list(args.scope)
    scopes += ["self"] if args.self_scope else []
    scopes += [f"team:{t}" for t in args.team] + [f"repo:{r}" for r in args.repo]
    scopes += [f"thread:{t}" for t in args.thread] + [f"user:{u}" for u in args.user]
    return scopes


def wanted(
    obj: object,
    scopes: set[str],
    kinds: set[str],
    after: int | None,
    seen: dict[str, bool] | None = None,
) -> bool | None:
    """True/False for an event; None for a line that is not an event (passed through).
    `seen` caches whether an event scope is covered (a recorded file repeats its threads)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), int):
        return None
    if after is not None and obj["id"] <= after:
        return False
    if kinds and obj.get("kind") not in kinds:
        return False
    seen = {} if seen is None else seen
    for scope in obj.get("scopes") or []:
        scope = str(scope)
        covered = seen.get(scope)
        if covered is None:
            covered = seen[scope] = any(cover in scopes for cover in covering(scope))
        if covered:
            return True
    return False


class Growth:
    """Waits until a followed file may have grown. With inotify (Linux) a write wakes it at
    once: a live event is passed on within a fraction of a millisecond, as a server's would
    be, where a 50 ms poll made it wait 25 ms on average (and woke 20 times a second for
    nothing). Elsewhere, or if inotify cannot be had, it sleeps POLL."""

    def __init__(self, path: Path, follow: bool = True) -> None:
        self.watch = _inotify(path) if follow else None

    def wait(self) -> None:
        if self.watch is None:
            time.sleep(POLL)
        elif select.select([self.watch], [], [], WATCHED)[0]:
            os.read(self.watch, 65536)  # what it said: something changed (read again)

    def close(self) -> None:
        if self.watch is not None:
            os.close(self.watch)
            self.watch = None


def _inotify(path: Path) -> int | None:
    """An inotify descriptor watching `path` for writes, or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        watch = int(libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK))
    except (OSError, AttributeError):
        return None
    if watch < 0:
        return None
    if libc.inotify_add_watch(watch, os.fsencode(path), IN_MODIFY) < 0:
        os.close(watch)
        return None
    return watch


def lines(path: Path, follow: bool, caught_up: Callable[[], None]) -> Iterator[bytes]:
    """The file's lines; with `follow`, then the lines appended later. `caught_up()` runs
    each time the end of the file is reached, before waiting for more."""
    with open(path, "rb") as handle, contextlib.closing(Growth(path, follow)) as growth:
        # Watched from before the first read: a write after any read wakes the wait.
        partial = b""
        while True:
            line = handle.readline()
            if line.endswith(b"\n"):
                yield partial + line
                partial = b""
            elif line:
                partial += line
            elif not follow:
                if partial:
                    yield partial + b"\n"
                return
            else:
                caught_up()
                growth.wait()


def replay(args: argparse.Namespace, out: IO[bytes], err: IO[str]) -> int:
    if args.fail_at_start:
        print("error: cannot connect to the ghit server (injected failure)", file=err)
        return int(args.exit_status or 1)
    scopes = set(scopes_of(args))
    if not scopes:
        print(
            "error: the server requires at least one scope (--scope, --team, --repo, ...)", file=err
        )
        return 2
    kinds = set(args.kind)
    try:
        # Output is flushed whenever the file has no more to give: what was recorded together
        # arrives together, like a burst from a server.
        source = lines(args.file, args.follow, out.flush)
        printed = 0
        seen: dict[str, bool] = {}
        for line in source:
            try:
                obj = orjson.loads(line)
            except ValueError:
                obj = None
            verdict = wanted(obj, scopes, kinds, args.last_event_id, seen)
            if verdict is False:
                continue
            if args.delay:
                time.sleep(args.delay)
            if verdict and args.pretty:
                out.write(json.dumps(obj, indent=2).encode() + b"\n")
            else:
                out.write(line)
            if args.delay or args.exit_after is not None:
                out.flush()
            if verdict:
                printed += 1
                if args.exit_after is not None and printed >= args.exit_after:
                    out.flush()
                    print(f"error: stream closed after {printed} events (injected)", file=err)
                    return int(args.exit_status)
        out.flush()
    except FileNotFoundError:
        print(f"error: {args.file}: no such file", file=err)
        return 1
    except BrokenPipeError:
        return 0
    if args.hang:
        while True:
            time.sleep(3600)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own buffer, even under PYTHONUNBUFFERED: a recorded file is replayed in big writes,
    # as a server's burst would arrive, rather than one write per line.
    out = open(sys.stdout.fileno(), "wb", buffering=65536, closefd=False)  # noqa: SIM115
    try:
        return replay(args, out, sys.stderr)
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(BrokenPipeError):
            out.close()


if __name__ == "__main__":
    raise SystemExit(main())
