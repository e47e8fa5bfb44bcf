"""A child process started at once, its pipes and its exit then watched by the running loop.

asyncio's `loop.subprocess_exec` is a coroutine: the process starts only when the task that
awaits it first runs, after whatever else the loop has queued by then (the run's bookkeeping,
the views, the next event's routing). An agent's run is started where it is decided instead:
`Child.start` calls `subprocess.Popen` (vfork, as asyncio does) at once, then `watch` hands
its pipes and its exit to the loop: the pipes are read with `add_reader`, stdin written with
`add_writer`, and the exit seen through a pidfd (Linux 5.3 and later; elsewhere a thread waits
for it, as asyncio's own child watcher does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

READ_SIZE = 256 * 1024  # as asyncio's pipe transport: at most this much per read

Output = Callable[[int, bytes], None]  # (1 for stdout or 2 for stderr, the bytes read)


IDLE_BEFORE_YIELD = 0.01  # seconds without a spawn after which a new child gets the CPU first
_last_spawn = 0.0  # time.monotonic() of the last spawn


def _let_it_run() -> None:
    """Give the CPU to the process just started, when none was started for a while. The
    kernel often puts a new child on its parent's CPU, where it waited for what the loop does
    after `Popen` (the run's bookkeeping: the views, the journal, its status line, ~0.5 ms)
    before it could exec: yielding lets it exec first (docs/performance.md). Only after
    IDLE_BEFORE_YIELD without a spawn: a stream's sparse events, where nothing else waits
    for this CPU; runs started in a burst, or at a busy stream's pace, never yield (a yield
    puts the loop behind whatever else is runnable on its CPU)."""
    global _last_spawn
    now = time.monotonic()
    idle, _last_spawn = now - _last_spawn >= IDLE_BEFORE_YIELD, now
    if idle:
        os.sched_yield()


class Child:
    """One child process in its own session, with stdin, stdout and stderr piped."""

    def __init__(self, proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._proc = proc
        self._loop = loop
        self.pid = proc.pid
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: dict[int, asyncio.Future[None]] = {fd: loop.create_future() for fd in (1, 2)}
        self._pipes: dict[int, IO[bytes] | None] = {1: proc.stdout, 2: proc.stderr}
        self._pidfd: int | None = None
        self._input = memoryview(b"")
        self._writing = False

    @classmethod
    def start(cls, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> Child:
        """The process, started now; raises what `subprocess.Popen` raises (OSError when the
        command cannot start, ValueError for a value the OS refuses)."""
        loop = asyncio.get_running_loop()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        _let_it_run()
        child = cls(proc, loop)
        try:
            child._watch_exit()  # first: whatever comes next, its exit is seen
        except BaseException:  # no descriptor, no thread left: it is not left running unseen
            child._discard()
            raise
        return child

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()
        self._collect()

    @property
    def returncode(self) -> int | None:
        """As `subprocess.Popen.returncode`: -N when signal N ended it."""
        return self._proc.returncode

    def watch(self, output: Output, stdin: bytes) -> None:
        """Read stdout and stderr into `output` as they come; write `stdin`, then close it."""
        for fd, pipe in self._pipes.items():
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
                self._loop.add_reader(pipe.fileno(), self._read, fd, output)
        if self._proc.stdin is not None:
            os.set_blocking(self._proc.stdin.fileno(), False)
            self._input = memoryview(stdin)
            self._write()

    def close(self) -> None:
        """Stop reading (what is left in the pipes is dropped) and close every pipe."""
        for fd in self._pipes:
            self._close_pipe(fd)
        self._input = memoryview(b"")
        self._close_stdin()
        self._stop_pidfd()

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
            self._loop.add_reader(self._pidfd, self._reaped)
        except Exception:  # no pidfd here (an old kernel, a sandbox, EMFILE): a thread waits
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            threading.Thread(target=self._wait, name=f"wait {self.pid}", daemon=True).start()

    def _reaped(self) -> None:
        self._stop_pidfd()
        self._collect()  # at once: the pidfd is readable once the process has exited
        self._exit()

    def _wait(self) -> None:
        self._collect()
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits now
            self._loop.call_soon_threadsafe(self._exit)

    def _collect(self) -> None:
        """Its exit status. One reaped by another (SIGCHLD ignored: app/runtime.py sets it
        back) left none: 255, as asyncio says, where `Popen.wait` would say 0, a success."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            self._proc.returncode = 255
        else:
            self._proc.returncode = os.waitstatus_to_exitcode(status)

    def _exit(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def _stop_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _read(self, fd: int, output: Output) -> None:
        pipe = self._pipes[fd]
        if pipe is None:
            return
        try:
            data = os.read(pipe.fileno(), READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            output(fd, data)
        else:
            self._close_pipe(fd)

    def _close_pipe(self, fd: int) -> None:
        pipe = self._pipes[fd]
        if pipe is not None:
            self._pipes[fd] = None
            self._loop.remove_reader(pipe.fileno())
            pipe.close()
        if not self.closed[fd].done():
            self.closed[fd].set_result(None)

    def _write(self) -> None:
        stdin = self._proc.stdin
        if stdin is None:
            return
        try:
            while self._input:
                written = os.write(stdin.fileno(), self._input)
                self._input = self._input[written:]
        except (BlockingIOError, InterruptedError):
            if not self._writing:
                self._writing = True
                self._loop.add_writer(stdin.fileno(), self._write)
            return
        except OSError:  # the agent closed its stdin (or exited) unread: as asyncio, dropped
            self._input = memoryview(b"")
        self._close_stdin()

    def _close_stdin(self) -> None:
        self._input = memoryview(b"")  # an empty slice still holds the whole prompt
        stdin = self._proc.stdin
        if stdin is None or stdin.closed:
            return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(stdin.fileno())
        stdin.close()


def cannot_start(command: str, error: OSError) -> str:
    """Why `command` could not start, in a line."""
    if isinstance(error, FileNotFoundError):
        return f"command not found: {command}"
    if isinstance(error, PermissionError):
        return f"permission denied: {command}"
    return f"cannot start {command}: {error.strerror or error}"
