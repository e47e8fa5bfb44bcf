"""The one shared tail-events subprocess, read as a stream of events, restarted with backoff.

Supervision: when tail-events exits or cannot start it is restarted from the last event id
seen, after a growing, capped, jittered delay. The stream counts as healthy again once a run
delivers an event or stays up for HEALTHY_AFTER seconds; if it is not healthy again within the
`retry` window since it first failed, `run()` returns GAVE_UP (exit status 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ghitwork.children import Children, die_with_parent
from ghitwork.config import AgentConfig, subscription_union
from ghitwork.events import MAX_OBJECT_BYTES, Decoder, Event, Malformed, too_long
from ghitwork.state import (
    EventSkipped,
    Level,
    Notice,
    SourceExited,
    SourceRetry,
    SourceStarted,
    StateBus,
)

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
HEALTHY_AFTER = 10.0
KILL_GRACE = 5.0
CHUNK = 256 * 1024


class Outcome(enum.Enum):
    DRAINED = "drained"  # exited 0 under --drain
    GAVE_UP = "gave up"  # the retry window ran out
    STOPPED = "stopped"  # stop() was called


def beside_ghit_work(command: str, path: str) -> str:
    """`command` itself, or the one installed beside ghit-work when PATH does not have it
    (ghit-work run from a virtualenv that is not activated still finds ghit-work-replay)."""
    if os.sep in command or shutil.which(command, path=path):
        return command
    sibling = Path(sys.executable).parent / command
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else command


def tail_command(
    tail_cmd: Sequence[str], agents: Sequence[AgentConfig], cursor: int | None
) -> list[str]:
    """tail_cmd + --scope/--kind for the union of the enabled agents, + --last-event-id."""
    scopes, kinds = subscription_union(tuple(agents))
    argv = list(tail_cmd)
    for scope in scopes:
        argv += ["--scope", scope]
    for kind in kinds:
        argv += ["--kind", kind]
    if cursor is not None:
        argv += ["--last-event-id", str(cursor)]
    return argv


def backoff(attempt: int, rng: random.Random) -> float:
    """0.5s, 1s, 2s, ... capped at MAX_DELAY, each within ±20% so restarts do not align."""
    base = min(MAX_DELAY, FIRST_DELAY * 2**attempt)
    return float(base * rng.uniform(0.8, 1.2))


class TailSource:
    def __init__(
        self,
        *,
        argv: Callable[[int | None], list[str]],
        cwd: Path,
        env: Mapping[str, str],
        bus: StateBus,
        emit: Callable[[list[Event]], None],
        drain: bool,
        window: Callable[[], float],
        cursor: int | None = None,
        rng: random.Random | None = None,
        active: Callable[[], bool] = lambda: True,
        children: Children | None = None,
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = dict(env)
        self.bus = bus
        self.emit = emit
        self.drain = drain
        self.window = window
        self.cursor = cursor
        self.rng = rng or random.Random()
        self.active = active
        self.children = children
        self._preexec = die_with_parent()
        self.events_seen = 0
        self._process: asyncio.subprocess.Process | None = None
        self._stopped = False
        self._restart = False
        self._wakeup = asyncio.Event()

    def stop(self) -> None:
        """Stop reading: terminate tail-events and do not restart it."""
        self._stopped = True
        self._wakeup.set()
        self._terminate()

    def restart(self) -> None:
        """Restart now from the cursor (the subscription changed), without backoff."""
        self._restart = True
        self._wakeup.set()
        self._terminate()

    def _terminate(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        _killpg(process.pid, signal.SIGTERM)
        asyncio.get_running_loop().call_later(KILL_GRACE, _killpg_if_alive, process, signal.SIGKILL)

    async def run(self) -> Outcome:
        failing_since: float | None = None
        attempt = 0
        while not self._stopped:
            self._wakeup.clear()
            if not self.active():
                # No enabled agent subscribes to anything: nothing to tail until a reload.
                await self._wakeup.wait()
                self._restart = False
                continue
            began = time.monotonic()
            seen_before = self.events_seen
            status, reason = await self._run_once()
            if self._stopped:
                return Outcome.STOPPED
            if self._restart:
                self._restart = False
                continue
            if self.drain and status == 0:
                return Outcome.DRAINED
            now = time.monotonic()
            if self.events_seen > seen_before or now - began >= HEALTHY_AFTER:
                failing_since, attempt = None, 0
            if failing_since is None:
                failing_since = now
            used, window = now - failing_since, self.window()
            if used >= window:
                return Outcome.GAVE_UP
            delay = min(backoff(attempt, self.rng), window - used)
            attempt += 1
            self.bus.publish(SourceRetry(delay=delay, used=used, window=window, reason=reason))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)
            if self._restart:
                self._restart = False
        return Outcome.STOPPED

    async def _run_once(self) -> tuple[int | None, str]:
        argv = self.argv(self.cursor)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                preexec_fn=self._preexec,
            )
        except (OSError, subprocess.SubprocessError) as error:
            reason = f"cannot start {argv[0]}: {getattr(error, 'strerror', None) or error}"
            self.bus.publish(SourceExited(status=None, reason=reason))
            return None, reason
        self._process = process
        if self.children is not None:
            self.children.add(process.pid, "tail-events")
        self.bus.publish(SourceStarted(pid=process.pid, argv=tuple(argv), cursor=self.cursor))
        if self._stopped or self._restart:
            self._terminate()
        assert process.stdout is not None and process.stderr is not None
        last_error: list[str] = []
        errors = asyncio.ensure_future(self._read_stderr(process.stderr, last_error))
        await self._read_stdout(process.stdout)
        status = await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(errors, 1.0)
        errors.cancel()
        self._process = None
        if self.children is not None and not _killpg(process.pid, 0):
            self.children.remove(process.pid)
        expected = self._stopped or self._restart
        reason = last_error[0] if last_error else "no message on stderr"
        if expected:
            reason = "stopped by ghit-work" if self._stopped else "restarted by ghit-work"
        self.bus.publish(SourceExited(status=status, reason=reason, expected=expected))
        return status, f"exit status {status}: {reason}"

    async def _read_stdout(self, stdout: asyncio.StreamReader) -> None:
        """Each read becomes one burst: its new events are emitted together. A line that
        spans reads is kept as a list of pieces (joined once, when it ends), and one longer
        than MAX_OBJECT_BYTES is reported and skipped up to its newline."""
        decoder = Decoder()
        pieces: list[bytes] = []  # the current, unfinished line
        size = 0
        skipping = False  # inside an over-long line: drop bytes until its newline
        while True:
            data = await stdout.read(CHUNK)
            if not data:
                break
            burst: list[Event] = []
            end = data.rfind(b"\n")
            if end < 0:
                if not skipping:
                    pieces.append(data)
                    size += len(data)
                    if size > MAX_OBJECT_BYTES:
                        self._accept(too_long(pieces[0]), burst)
                        pieces, size, skipping = [], 0, True
                continue
            lines = data[:end].split(b"\n")
            if skipping:
                lines.pop(0)
                skipping = False
            elif pieces:
                pieces.append(lines[0])
                lines[0] = b"".join(pieces)
            rest = data[end + 1 :]
            pieces, size = ([rest], len(rest)) if rest else ([], 0)
            for line in lines:
                for item in decoder.feed(line):
                    self._accept(item, burst)
            if burst:
                self.emit(burst)
        burst = []
        if pieces and not skipping:
            for item in decoder.feed(b"".join(pieces)):
                self._accept(item, burst)
        for item in decoder.close():
            self._accept(item, burst)
        if burst:
            self.emit(burst)

    def _accept(self, item: Event | Malformed, burst: list[Event]) -> None:
        if isinstance(item, Malformed):
            self.bus.publish(EventSkipped(malformed=item))
            return
        if self.cursor is not None and item.id <= self.cursor:
            return  # at or below the cursor: already delivered (a reconnect replays around it)
        self.cursor = item.id
        self.events_seen += 1
        burst.append(item)

    async def _read_stderr(self, stderr: asyncio.StreamReader, last: list[str]) -> None:
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # a line over the stream limit; the rest of it follows
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").strip()
            if text:
                last[:] = [text[:500]]
                self.bus.publish(Notice(level=Level.WARNING, topic="tail-events", message=text))


def _killpg(pid: int, sig: int) -> bool:
    """Signal a process group (0: just look); False when nothing is left in it."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _killpg_if_alive(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if process.returncode is None:
        _killpg(process.pid, sig)
