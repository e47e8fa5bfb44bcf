"""Single flight across a crash: the process groups this instance started, recorded in
state_dir so the next instance can end what a crash (kill -9, OOM) left running.

    state_dir/children    one JSON line per change: {"boot": ID} first, then
                          {"+": PGID, "t": START, "what": "agent codex"} when a group starts
                          and {"-": PGID} once nothing of it is left

A group is recognised by its leader's pid AND start time (field 22 of /proc/PID/stat, in clock
ticks since boot) on the same boot, so a reused pid is never signalled. When the leader is
gone but members of its group live on (an agent's `sleep 600 &`), they are recognised by their
group id, which the kernel does not hand out again while any member uses it, and by having
started no earlier than the leader did.

The file is appended to without fsync: a crash of ghit-work keeps what it wrote (the kernel
has it), and a power loss ends the children too. Linux only (elsewhere nothing is recorded).

tail-events also gets a parent-death signal (it dies with ghit-work even before the next
start). Agents do not: setting one needs code in the child before exec, which makes Python
fork instead of vfork and costs about 2.4 ms per spawn (docs/operations.md), so agents rely on
this sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PROC = Path("/proc")
KILL_GRACE = 5.0
COMPACT_AFTER = 1000  # removals before the file is rewritten with the live groups only


def boot_id() -> str:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time) of a live process; None when it is gone or a zombie."""
    try:
        data = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        if fields[0] in (b"Z", b"X"):
            return None  # exited, only waiting to be reaped
        return int(fields[2]), int(fields[19])  # pgrp, starttime (fields 5 and 22)
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Group:
    pgid: int
    start: int
    what: str


class Children:
    """The registry a running instance keeps."""

    def __init__(self, path: Path | None) -> None:
        self.path = path if path is not None and PROC.is_dir() else None
        self.live: dict[int, Group] = {}
        self._file: IO[bytes] | None = None
        self._removed = 0

    def open(self) -> None:
        if self.path is None:
            return
        self._rewrite()

    def add(self, pgid: int, what: str) -> None:
        stat = _stat(pgid)
        if stat is None or self.path is None:
            return  # gone already (or no /proc): nothing to end later
        group = self.live[pgid] = Group(pgid, stat[1], what)
        self._write(f'{{"+":{pgid},"t":{group.start},"what":{json.dumps(what)}}}')

    def remove(self, pgid: int) -> None:
        if self.live.pop(pgid, None) is None:
            return
        self._removed += 1
        if self._removed >= COMPACT_AFTER:
            self._rewrite()
        else:
            self._write(f'{{"-":{pgid}}}')

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, line: str) -> None:
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self._file.write(line.encode() + b"\n")
            self._file.flush()

    def _rewrite(self) -> None:
        assert self.path is not None
        self.close()
        self._removed = 0
        lines = [{"boot": boot_id()}] + [
            {"+": g.pgid, "t": g.start, "what": g.what} for g in self.live.values()
        ]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
            os.replace(tmp, self.path)
            self._file = open(self.path, "ab")  # noqa: SIM115 closed by close()
        except OSError:
            self._file = None


def left_behind(path: Path) -> list[Group]:
    """The groups a previous instance recorded that still have a live member."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return []
    recorded: dict[int, Group] = {}
    boot = None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if not isinstance(record, dict):
            continue
        if "boot" in record:
            boot = record["boot"]
        elif "+" in record:
            pgid = int(record["+"])
            recorded[pgid] = Group(pgid, int(record["t"]), str(record.get("what", "")))
        elif "-" in record:
            recorded.pop(int(record["-"]), None)
    if not recorded or boot != boot_id():
        return []  # nothing recorded, or a reboot ended them all
    members = _members(set(recorded))
    alive = []
    for group in recorded.values():
        leader = _stat(group.pgid)
        if leader is not None:
            if leader[1] == group.start and leader[0] == group.pgid:
                alive.append(group)
            continue  # the pid was reused by another process: not ours
        starts = members.get(group.pgid, [])
        if starts and all(start >= group.start for start in starts):
            alive.append(group)
    return alive


def _members(pgids: set[int]) -> dict[int, list[int]]:
    """Start times of the live processes in each of `pgids`."""
    found: dict[int, list[int]] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[0] in pgids:
            found.setdefault(stat[0], []).append(stat[1])
    return found


async def end_left_behind(path: Path, report: Callable[[str], None]) -> int:
    """End every group a previous instance left behind: SIGTERM, then SIGKILL after
    KILL_GRACE. Returns how many there were."""
    groups = left_behind(path)
    if not groups:
        return 0
    names = ", ".join(f"{g.what} (process group {g.pgid})" for g in groups)
    report(f"ending what a previous ghit-work left running: {names}")
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group.pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + KILL_GRACE
    pgids = {group.pgid for group in groups}
    while _members(pgids) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    left = _members(pgids)
    for pgid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if left:
        report(f"killed (SIGKILL) {len(left)} group(s) that ignored SIGTERM")
    while _members(pgids) and loop.time() < deadline + 2.0:
        await asyncio.sleep(0.05)
    return len(groups)


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child get SIGTERM when ghit-work dies (Linux's
    PR_SET_PDEATHSIG), or None where there is no such thing. Everything is looked up here, in
    the parent: the child only makes one call."""
    if not PROC.is_dir():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # ghit-work died before the call: go now
            os._exit(1)

    return preexec
