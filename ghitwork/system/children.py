"""Single flight across a crash: the process groups this instance started, recorded in
state_dir so the next instance can end what a crash (kill -9, OOM) left running.

    state_dir/children    one JSON line per change, owner-only (0600):
                          {"boot": ID, "instance": "PID.START"} first, then
                          {"+": PGID, "t": START, "what": "agent codex"} when a group starts
                          and {"-": PGID} once nothing of it is left

A group is recognised by its leader's pid AND start time (field 22 of /proc/PID/stat, in clock
ticks since boot) on the same boot, so a reused pid is never signalled. When the leader is
gone but members of its group live on (an agent's `sleep 600 &`), they are recognised by their
group id, which the kernel does not hand out again while any member uses it, and by having
started no earlier than the leader did.

The mark: every child (each agent run and tail-events) gets GHIT_WORK_INSTANCE=PID.START (this
ghit-work process) in its environment, and so does everything they start unless it clears its
environment. The header names the instance before anything is started, so a process of it is
recognisable from its first instruction: one killed with ghit-work before its group was
recorded (the moment after a spawn), a wrapper's child, a daemon that left its group (setsid +
double fork). Finding them reads /proc/PID/environ of every process (about 5 µs each, the
user's own only); it is done at start and at a stop, never per run. Costs nothing per spawn,
where a gate before exec would cost a shell or a fork instead of vfork (docs/operations.md,
#leftovers, has the figures).

The file is appended to without fsync: a crash of ghit-work keeps what it wrote (the kernel
has it), and a power loss ends the children too. Linux only (elsewhere nothing is recorded).

tail-events also gets a parent-death signal (it dies with ghit-work even before the next
start). Agents do not: setting one needs code in the child before exec, which makes Python
fork instead of vfork (2.40 ms a spawn instead of 1.10 ms), so agents rely on the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO

import msgspec

from ghitwork.system.files import write_atomic
from ghitwork.system.groups import KILL_GRACE, signal_group

PROC = Path("/proc")

COMPACT_AFTER = 1000  # removals before the file is rewritten with the live groups only
RECORD_AFTER = 0.05  # seconds after a spawn its group is recorded (the mark covers the gap)
MARK = "GHIT_WORK_INSTANCE"  # in every child's environment: the instance that started it
CGROUP_HINT = "a cgroup ends these without ghit-work: docs/operations.md#leftovers"

Report = Callable[[str], None]


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


def instance() -> str:
    """This ghit-work process as its children's environment names it: `PID.START`."""
    return _instance(os.getpid())


@functools.cache
def _instance(pid: int) -> str:
    stat = _stat(pid)
    return f"{pid}.{stat[1] if stat is not None else 0}"


def marked(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this instance's mark, for a child."""
    return {**env, MARK: instance()}


class Group(msgspec.Struct, frozen=True):
    pgid: int
    start: int
    what: str
    pids: tuple[int, ...] = ()  # found by the mark, outside the recorded groups: its members

    def describe(self) -> str:
        if not self.pids:
            return f"{self.what} (process group {self.pgid})"
        pids = ", ".join(str(pid) for pid in self.pids)
        return f"{self.what} (pid {pids} in process group {self.pgid}, not a recorded group)"


class Stray(msgspec.Struct, frozen=True):
    """A live process that carries an instance's mark."""

    pid: int
    pgid: int
    start: int
    what: str  # "agent NAME" (its GHIT_WORK_AGENT), else "tail-events"


class Children:
    """The registry a running instance keeps."""

    def __init__(self, path: Path | None) -> None:
        self.path = path if path is not None and PROC.is_dir() else None
        self.live: dict[int, Group] = {}
        self._file: IO[bytes] | None = None
        self._removed = 0
        self._due: dict[int, Callable[[], None]] = {}  # groups whose record is still to come

    def open(self) -> None:
        if self.path is None:
            return
        self._rewrite()

    def add(self, pgid: int, what: str, soon: bool = False) -> None:
        """Record a group just started; `soon`: RECORD_AFTER seconds later, when a loop runs
        (an agent's run: reading /proc/PID/stat the moment the process has exec'd waits
        about 1 ms for it, 0.15 ms later on, with the loop blocked; a run that ends sooner
        needs no record at all). Until it is written, the mark finds the group."""
        if self.path is None:
            return
        try:
            later = asyncio.get_running_loop().call_later
        except RuntimeError:  # no loop (a test): at once
            soon = False
        if not soon:
            self._record(pgid, what)
            return
        self._due[pgid] = later(RECORD_AFTER, self._record, pgid, what).cancel

    def _record(self, pgid: int, what: str) -> None:
        self._due.pop(pgid, None)
        stat = _stat(pgid)
        if stat is None:
            return  # gone already: its mark finds what it left
        group = self.live[pgid] = Group(pgid, stat[1], what)
        self._write(f'{{"+":{pgid},"t":{group.start},"what":{json.dumps(what)}}}')

    def remove(self, pgid: int) -> None:
        cancel = self._due.pop(pgid, None)
        if cancel is not None:  # ended before its record was due: it never needs one
            cancel()
            return
        if self.live.pop(pgid, None) is None:
            return
        self._removed += 1
        if self._removed >= COMPACT_AFTER:
            self._rewrite()
        else:
            self._write(f'{{"-":{pgid}}}')

    async def end_all(self, report: Report, grace: float = KILL_GRACE) -> int:
        """At a stop: end every group this instance started that still has a live member,
        and every process of it that left its group (found by the mark), SIGTERM then
        SIGKILL after `grace`; each is reported. Returns how many groups were ended."""
        if self.path is None:
            return 0
        recorded = [group for group in self.live.values() if _alive(group)]
        groups = recorded + _stray_groups(strays(instance()), {g.pgid for g in recorded})
        for group in list(self.live.values()):
            if group not in recorded:
                self.remove(group.pgid)  # its last member ended since
        if not groups:
            return 0
        names = ", ".join(group.describe() for group in groups)
        hint = f"; {CGROUP_HINT}" if any(group.pids for group in groups) else ""
        report(f"ending what this ghit-work started that is still running: {names}{hint}")
        await _end(groups, report, grace)
        for group in recorded:
            self.remove(group.pgid)
        return len(groups)

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
        lines = [{"boot": boot_id(), "instance": instance()}] + [
            {"+": g.pgid, "t": g.start, "what": g.what} for g in self.live.values()
        ]
        try:
            data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
            write_atomic(self.path, data, sync=False)  # owner-only: it names what runs
            self._file = open(self.path, "ab")  # noqa: SIM115 closed by close()
        except OSError:
            self._file = None


def _read(path: Path) -> tuple[str | None, str | None, dict[int, Group]]:
    """(boot id, instance, the groups recorded and not removed) of a children file."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return None, None, {}
    recorded: dict[int, Group] = {}
    boot = previous = None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if not isinstance(record, dict):
            continue
        if "boot" in record:
            boot, previous = record["boot"], record.get("instance")
        elif "+" in record:
            pgid = int(record["+"])
            recorded[pgid] = Group(pgid, int(record["t"]), str(record.get("what", "")))
        elif "-" in record:
            recorded.pop(int(record["-"]), None)
    return boot, previous if isinstance(previous, str) else None, recorded


def _alive(group: Group, members: Mapping[int, list[int]] | None = None) -> bool:
    """The group's leader is the process recorded, or its members started after it."""
    leader = _stat(group.pgid)
    if leader is not None:
        return leader[1] == group.start and leader[0] == group.pgid  # else: a reused pid
    starts = (members if members is not None else _members({group.pgid})).get(group.pgid, [])
    return bool(starts) and all(start >= group.start for start in starts)


def left_behind(path: Path) -> list[Group]:
    """What a previous instance left running: the groups it recorded that still have a live
    member, then the groups of the processes that carry its mark outside those (started
    before their group was recorded, or left their group)."""
    boot, previous, recorded = _read(path)
    if boot != boot_id():
        return []  # nothing recorded, or a reboot ended them all
    members = _members(set(recorded)) if recorded else {}
    alive = [group for group in recorded.values() if _alive(group, members)]
    if previous is None or previous == instance():
        return alive  # an older file, or this very process's (its runs are its own)
    return alive + _stray_groups(strays(previous), {group.pgid for group in alive})


def strays(mark: str) -> list[Stray]:
    """The live processes whose environment carries `mark` (the user's own: others'
    environments cannot be read), oldest first."""
    needle = f"\0{MARK}={mark}\0".encode()
    found = []
    spared = {os.getpid(), os.getppid()}  # a ghit-work started by an agent carries its mark
    for entry in os.scandir(PROC):
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        environ = _environ(int(entry.name))
        if environ is None or needle not in environ:
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[0] == os.getpgrp():
            continue
        agent = _value(environ, b"GHIT_WORK_AGENT")
        what = f"agent {agent}" if agent else "tail-events"
        found.append(Stray(int(entry.name), stat[0], stat[1], what))
    return sorted(found, key=lambda stray: (stray.start, stray.pid))


def _environ(pid: int) -> bytes | None:
    """b"\\0" + the process's environment + b"\\0" (so every entry is between NULs)."""
    try:
        fd = os.open(PROC / str(pid) / "environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks = [b"\0"]
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    chunks.append(b"\0")
    return b"".join(chunks)


def _value(environ: bytes, name: bytes) -> str:
    start = environ.find(b"\0" + name + b"=")
    if start < 0:
        return ""
    start += len(name) + 2
    return environ[start : environ.index(b"\0", start)].decode("utf-8", "replace")


def _stray_groups(found: Iterable[Stray], known: set[int]) -> list[Group]:
    """One group per process group of `found` outside `known`, named with its pids. A
    session is created by each child (start_new_session) and by whatever leaves its group
    (setsid), so every member of such a group descends from the instance."""
    groups: dict[int, list[Stray]] = {}
    for stray in found:
        if stray.pgid not in known:
            groups.setdefault(stray.pgid, []).append(stray)
    return [
        Group(pgid, min(s.start for s in members), members[0].what, tuple(s.pid for s in members))
        for pgid, members in groups.items()
    ]


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


async def _end(groups: list[Group], report: Report, grace: float) -> None:
    """SIGTERM each group, SIGKILL what is left after `grace`, and wait (2 s more at most)
    until nothing of them is left."""
    for group in groups:
        signal_group(group.pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    pgids = {group.pgid for group in groups}
    while _members(pgids) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    left = _members(pgids)
    for pgid in left:
        signal_group(pgid, signal.SIGKILL)
    if left:
        report(f"killed (SIGKILL) {len(left)} group(s) that ignored SIGTERM")
    while _members(pgids) and loop.time() < deadline + 2.0:
        await asyncio.sleep(0.05)


async def end_left_behind(path: Path, report: Report) -> int:
    """End every group a previous instance left behind: SIGTERM, then SIGKILL after
    KILL_GRACE. Returns how many there were."""
    groups = left_behind(path)
    if not groups:
        return 0
    names = ", ".join(group.describe() for group in groups)
    report(f"ending what a previous ghit-work left running: {names}")
    await _end(groups, report, KILL_GRACE)
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
