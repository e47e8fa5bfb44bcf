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
import fcntl
import os
import random
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ghitwork.bus.changes import (
    EventSkipped,
    Level,
    Notice,
    SourceExited,
    SourceRetry,
    SourceStarted,
    StateBus,
)
from ghitwork.config.model import AgentConfig, Config, subscription_union
from ghitwork.model.events import MAX_OBJECT_BYTES, Decoder, Event, Malformed, too_long
from ghitwork.system.children import Children, die_with_parent, marked
from ghitwork.system.groups import signal_group, terminate_group

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
HEALTHY_AFTER = 10.0
PIPE_SIZE = 1024 * 1024  # the unprivileged maximum (/proc/sys/fs/pipe-max-size)


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


def tail_argv(config: Config, path: str, cursor: int | None) -> list[str]:
    """The tail-events command line of `config` from `cursor`, its command found on `path`
    or beside ghit-work."""
    argv = tail_command(config.tail_cmd, config.agents, cursor)
    argv[0] = beside_ghit_work(argv[0], path)
    return argv


def subscription(config: Config) -> tuple[object, ...]:
    """What tail-events is started with, less the cursor: a reload that changes it restarts
    tail-events."""
    scopes, kinds = subscription_union(config.agents)
    return (config.tail_cmd, tuple(scopes), tuple(kinds))


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
        backlog: Callable[[bool], None] = lambda more: None,
        fail: Callable[[Exception], None] | None = None,
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
        self.backlog = backlog  # after each read: whether more is already waiting
        # What an exception while reading the stream becomes (the daemon: fatal, exit 4).
        # Never left to the loop's handler: the bytes it was reading would be lost unnoticed.
        self.fail = fail
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
        """SIGTERM to tail-events' group, SIGKILL KILL_GRACE later if it is still being read:
        a wrapper's child may hold the stream after the wrapper itself has gone."""
        process = self._process
        if process is not None:
            # SIGKILL only while it is still read: something of its group holds the stream.
            terminate_group(process.pid, still_wanted=lambda: self._process is process)

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
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()  # ours, to see how much is waiting in it (backlog)
        _grow_pipe(read_end)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=marked(self.env),  # what a wrapper starts is recognised too (children.py)
                start_new_session=True,
                preexec_fn=self._preexec,
            )
        except (OSError, subprocess.SubprocessError) as error:
            os.close(read_end)
            reason = f"cannot start {argv[0]}: {getattr(error, 'strerror', None) or error}"
            self.bus.publish(SourceExited(status=None, reason=reason))
            return None, reason
        finally:
            os.close(write_end)
        self._process = process
        if self.children is not None:
            self.children.add(process.pid, "tail-events")
        self.bus.publish(SourceStarted(pid=process.pid, argv=tuple(argv), cursor=self.cursor))
        if self._stopped or self._restart:
            self._terminate()
        assert process.stderr is not None
        last_error: list[str] = []
        errors = asyncio.ensure_future(self._read_stderr(process.stderr, last_error))
        lines = _Lines(self, read_end, loop.create_future())
        transport, _ = await loop.connect_read_pipe(
            lambda: lines, os.fdopen(read_end, "rb", buffering=0)
        )
        try:
            await lines.ended
        finally:
            transport.close()
        status = await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(errors, 1.0)
        errors.cancel()
        self._process = None
        if self.children is not None and not signal_group(process.pid, 0):
            self.children.remove(process.pid)
        # Stopped or restarted by ghit-work, or a recorded stream's end under --drain: not a
        # failure of the stream (it stays healthy).
        expected = self._stopped or self._restart or (self.drain and status == 0)
        reason = last_error[0] if last_error else "no message on stderr"
        if self._stopped:
            reason = "stopped by ghit-work"
        elif self._restart:
            reason = "restarted by ghit-work"
        elif expected:
            reason = "the end of the stream; --drain does not restart it"
        self.bus.publish(SourceExited(status=status, reason=reason, expected=expected))
        return status, f"exit status {status}: {reason}"

    def _accept(self, items: list[Event | Malformed], burst: list[Event]) -> None:
        """New events join the burst; malformed output is reported; an event at or below
        the cursor was already delivered (a reconnect replays around it)."""
        cursor = self.cursor
        before = len(burst)
        for item in items:
            if isinstance(item, Malformed):
                self.bus.publish(EventSkipped(malformed=item))
            elif cursor is None or item.id > cursor:
                cursor = item.id
                burst.append(item)
        self.events_seen += len(burst) - before
        self.cursor = cursor

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


class _Lines(asyncio.Protocol):
    """tail-events' stdout: each read becomes one burst, its new events emitted together.

    A line that spans reads is kept as a list of pieces (joined once, when it ends), and one
    longer than MAX_OBJECT_BYTES is reported and skipped up to its newline. After each read
    the source learns whether more is already waiting in the pipe: a backlog (catch-up)."""

    def __init__(self, source: TailSource, fd: int, ended: asyncio.Future[None]) -> None:
        self.source = source
        self.fd = fd
        self.ended = ended
        self.decoder = Decoder()
        self.pieces: list[bytes] = []  # the current, unfinished line
        self.size = 0
        self.skipping = False  # inside an over-long line: drop bytes until its newline
        self.first = True  # no event read yet from this run of tail-events

    def data_received(self, data: bytes) -> None:
        try:
            self._read(data)
        except Exception as error:
            if self.source.fail is None:
                raise
            self.source.fail(error)

    def _read(self, data: bytes) -> None:
        burst: list[Event] = []
        end = data.rfind(b"\n")
        if end < 0:
            if not self.skipping:
                self.pieces.append(data)
                self.size += len(data)
                if self.size > MAX_OBJECT_BYTES:
                    self.source._accept([too_long(self.pieces[0])], burst)
                    self.pieces, self.size, self.skipping = [], 0, True
            self.source.backlog(_waiting(self.fd) > 0)
            return
        lines = data[:end].split(b"\n")
        if self.skipping:
            lines.pop(0)
            self.skipping = False
        elif self.pieces:
            self.pieces.append(lines[0])
            lines[0] = b"".join(self.pieces)
        rest = data[end + 1 :]
        self.pieces, self.size = ([rest], len(rest)) if rest else ([], 0)
        self.source._accept(self.decoder.decode(lines), burst)
        more = _waiting(self.fd) > 0
        # Told first: the runs these events would start wait for the next reads. A stream's
        # first events are held too (for routing.SETTLE when nothing follows): tail-events
        # may have only begun to print a catch-up.
        if more or (burst and self.first):
            self.source.backlog(True)
        self.first = self.first and not burst
        if burst:
            self.source.emit(burst)
        if not more:
            self.source.backlog(False)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._last()
        except Exception as error:
            if self.source.fail is None:
                raise
            self.source.fail(error)
        if not self.ended.done():
            self.ended.set_result(None)

    def _last(self) -> None:
        burst: list[Event] = []
        if self.pieces and not self.skipping:
            self.source._accept(self.decoder.decode([b"".join(self.pieces)]), burst)
        self.source._accept(list(self.decoder.close()), burst)
        if burst:
            self.source.emit(burst)
        self.source.backlog(False)


def _grow_pipe(fd: int) -> None:
    """Let tail-events print up to PIPE_SIZE ahead of us (64 KiB by default on Linux): a
    catch-up then arrives in fewer, larger reads. Best effort: the default works too."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _waiting(fd: int) -> int:
    """Bytes already waiting in the pipe (0 when it cannot be told)."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]
    except OSError:
        return 0
