"""One agent invocation: a subprocess in its own process group, fed the prompt on stdin.

A run ends when the agent process exits, not when its pipes close: something it started in
the background may hold stdout open for hours. After the exit its output is read for at most
PIPE_GRACE seconds more; then whatever is left in its process group gets SIGTERM, and SIGKILL
KILL_GRACE seconds later, while the agent's next batch is already free to start.

stdout and stderr arrive through one protocol (no reader task per pipe), are archived to
`logdir` when set and searched line by line (output.py); the ghit token is redacted from every
byte ghit-work writes down.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ghitwork.archive import LogFiles, Redactor, iso, write_atomic
from ghitwork.config import SCRUBBED_ENV
from ghitwork.output import Findings, OutputSink, Patterns, Stream
from ghitwork.results import SIGNALS, RunResult
from ghitwork.usage import GROUPS as USAGE_GROUPS
from ghitwork.usage import Tally

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
PIPE_GRACE = 2.0  # how long output is still read after the agent exited

# `on_start(pgid)` when a process group starts, `on_gone(pgid)` once nothing of it is left.
GroupHook = Callable[[int], None]
# What the run spent, from what its output said: the result with its `charge`.
Account = Callable[[RunResult, Tally], RunResult]
NO_PATTERNS = Patterns()


class Why(enum.Enum):
    """Why ghit-work ended a run before the agent did."""

    STOPPING = "ghit-work is stopping"  # not finished: its batch comes again
    OPERATOR = "stopped by the operator"  # not retried: a dead letter at once
    TIMEOUT = "timed out"
    STALL = "stalled"


def agent_environment(
    base: Mapping[str, str], extra: Mapping[str, str], name: str
) -> dict[str, str]:
    """ghit-work's environment without the ghit credentials, plus the agent's `env`."""
    env = {key: value for key, value in base.items() if key not in SCRUBBED_ENV}
    env.update(extra)
    env["GHIT_WORK_AGENT"] = name
    return env


def signal_group(pgid: int | None, sig: signal.Signals) -> bool:
    """Signal a process group; False when nothing is left in it."""
    if pgid is None:
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self, streams: dict[int, Stream], loop: asyncio.AbstractEventLoop) -> None:
        self.streams = streams
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: dict[int, asyncio.Future[None]] = {fd: loop.create_future() for fd in streams}
        self.last_output = time.monotonic()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.last_output = time.monotonic()
        stream = self.streams.get(fd)
        if stream is not None and isinstance(data, bytes):
            stream.chunk(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        closed = self.closed.get(fd)
        if closed is not None and not closed.done():
            closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class Invocation:
    """One run of an agent command. `run()` never raises for agent failures."""

    def __init__(
        self,
        *,
        agent: str,
        argv: Sequence[str],
        prompt: str,
        workdir: Path,
        env: Mapping[str, str],
        event_ids: Sequence[int],
        timeout: float | None = None,
        stall_timeout: float | None = None,
        logdir: Path | None = None,
        patterns: Patterns = NO_PATTERNS,
        resumed: bool = False,
        attempt: int = 1,
        secrets: Sequence[str] = (),
        forward: OutputSink | None = None,
        on_start: GroupHook | None = None,
        on_gone: GroupHook | None = None,
        account: Account | None = None,
    ) -> None:
        self.agent = agent
        self.argv = tuple(argv)
        self.prompt = prompt
        self.workdir = workdir
        self.env = dict(env)
        self.event_ids = tuple(event_ids)
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self.logdir = logdir
        self.patterns = patterns
        self.resumed = resumed
        self.attempt = attempt
        self.secrets = tuple(secrets)
        self.forward = forward
        self.on_start = on_start
        self.on_gone = on_gone
        self.account = account
        self.pid: int | None = None
        self._why: Why | None = None
        self._exited = False
        self._killer: asyncio.TimerHandle | None = None

    def terminate(self, why: Why) -> None:
        """SIGTERM to the agent's process group, SIGKILL after KILL_GRACE."""
        if self._why is None or why is Why.STOPPING:
            self._why = why
        if self.pid is None or self._exited:
            return
        signal_group(self.pid, signal.SIGTERM)
        if self._killer is None:
            loop = asyncio.get_running_loop()
            self._killer = loop.call_later(KILL_GRACE, signal_group, self.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the agent's process group now."""
        self._why = self._why or Why.STOPPING
        signal_group(self.pid, signal.SIGKILL)

    async def run(self) -> RunResult:
        started = time.time()
        logs: LogFiles | None = None
        if self.logdir is not None:
            try:
                logs = LogFiles.create(self.logdir, self.agent, started)
                write_atomic(logs.path("prompt"), Redactor(self.secrets).text(self.prompt).encode())
            except OSError as error:
                return self._result(
                    started, error=f"cannot write logs in {self.logdir}: {error.strerror or error}"
                )
        result, tally = await self._run(started, logs)
        if self.account is not None:
            result = self.account(result, tally)
        if logs is not None:
            with contextlib.suppress(OSError):
                logs.write_record(self.record(result), self.secrets)
        return result

    def _result(self, started: float, **fields: object) -> RunResult:
        return RunResult(
            agent=self.agent,
            event_ids=self.event_ids,
            command=self.argv,
            started=started,
            ended=time.time(),
            resumed=self.resumed,
            attempt=self.attempt,
            limits=(self.timeout, self.stall_timeout),
            **fields,  # type: ignore[arg-type]
        )

    async def _run(self, started: float, logs: LogFiles | None) -> tuple[RunResult, Tally]:
        files = logs.all if logs else ()
        if not self.workdir.is_dir():
            error = f"workdir {self.workdir} does not exist"
            return self._result(started, error=error, log_files=files), Tally()
        findings = Findings()
        streams = {
            fd: Stream(
                name,
                open(logs.path(name), "wb") if logs else None,  # noqa: SIM115 closed by Stream.close
                Redactor(self.secrets),
                self.patterns,
                findings,
                self.forward,
            )
            for fd, name in ((1, "stdout"), (2, "stderr"))
        }
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Protocol(streams, loop),
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
            )
        except OSError as error:
            for stream in streams.values():
                stream.close()
            error_text = _cannot_start(self.argv[0], error)
            return self._result(started, error=error_text, log_files=files), findings.tally
        self.pid = transport.get_pid()
        if self.on_start is not None:
            self.on_start(self.pid)
        stdin = transport.get_pipe_transport(0)
        if isinstance(stdin, asyncio.WriteTransport):
            stdin.write(self.prompt.encode())
            stdin.close()  # after the buffered prompt is written: the agent sees EOF
        if self._why is not None:
            self.terminate(self._why)
        try:
            await self._watch(protocol)
        except asyncio.CancelledError:
            self.terminate(Why.STOPPING)
            await asyncio.shield(protocol.exited)
            raise
        finally:
            self._exited = True
            if self._killer is not None:
                self._killer.cancel()
        # The agent has exited: its own status and duration. Read what is still in the pipes
        # for a moment, then end whatever it left behind in its group.
        ended = time.time()
        await asyncio.wait(list(protocol.closed.values()), timeout=PIPE_GRACE)
        self._end_leftovers(loop)
        transport.close()
        for stream in streams.values():
            stream.close()
        code = transport.get_returncode()
        why = self._why
        failed = not (code == 0 and why is None)
        result = RunResult(
            agent=self.agent,
            event_ids=self.event_ids,
            command=self.argv,
            started=started,
            ended=ended,
            pid=self.pid,
            returncode=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            timed_out=why is Why.TIMEOUT,
            stalled=why is Why.STALL,
            stopped=why is Why.STOPPING,
            operator_stopped=why is Why.OPERATOR,
            rate_limited=failed and findings.rate_limited and why is not Why.STOPPING,
            retry_after=findings.retry_after,
            session_id=findings.session_id,
            resumed=self.resumed,
            attempt=self.attempt,
            log_files=files,
            last_stderr=streams[2].last_line,
            limits=(self.timeout, self.stall_timeout),
        )
        return result, findings.tally

    async def _watch(self, protocol: _Protocol) -> None:
        """Until the agent process exits, ending it when it runs past `timeout` or prints
        nothing for `stall_timeout`."""
        began = time.monotonic()
        while not protocol.exited.done():
            deadlines: list[tuple[float, Why]] = []
            if self._why is None:
                if self.timeout is not None:
                    deadlines.append((began + self.timeout, Why.TIMEOUT))
                if self.stall_timeout is not None:
                    deadlines.append((protocol.last_output + self.stall_timeout, Why.STALL))
            wait = None
            if deadlines:
                due, why = min(deadlines, key=lambda deadline: deadline[0])
                wait = due - time.monotonic()
                if wait <= 0:
                    self.terminate(why)
                    continue
            await asyncio.wait([protocol.exited], timeout=wait)

    def _end_leftovers(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGTERM what is left of the run's process group; SIGKILL it KILL_GRACE later."""
        pgid = self.pid
        if pgid is None:
            return
        if not signal_group(pgid, signal.SIGTERM):
            self._gone(pgid)
            return

        def kill() -> None:
            signal_group(pgid, signal.SIGKILL)
            self._gone(pgid)

        loop.call_later(KILL_GRACE, kill)

    def _gone(self, pgid: int) -> None:
        if self.on_gone is not None:
            self.on_gone(pgid)

    def record(self, result: RunResult) -> dict[str, object]:
        """The run's logdir record."""
        return {
            "agent": result.agent,
            "start": iso(result.started),
            "end": iso(result.ended),
            "duration": round(result.duration, 3),
            "exit_status": result.returncode,
            "signal": signal.Signals(result.signal).name if result.signal in SIGNALS else None,
            "error": result.error,
            "outcome": result.outcome,
            "timed_out": result.timed_out,
            "stalled": result.stalled,
            "stopped": result.stopped,
            "attempt": result.attempt,
            "rate_limited": result.rate_limited,
            **(result.usage.to_json() if result.usage else dict.fromkeys(USAGE_GROUPS)),
            "event_ids": list(result.event_ids),
            "session_id": result.session_id,
            "resumed": result.resumed,
            "command": list(result.command),
            "pid": result.pid,
        }


def _cannot_start(command: str, error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return f"command not found: {command}"
    if isinstance(error, PermissionError):
        return f"permission denied: {command}"
    return f"cannot start {command}: {error.strerror or error}"
