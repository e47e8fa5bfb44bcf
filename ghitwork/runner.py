"""One agent invocation: a subprocess in its own process group, fed the prompt on stdin.

stdout and stderr are drained concurrently (a chatty agent never blocks), archived to `logdir`
when set, searched line by line for the session id, and the ghit token is redacted from every
byte ghit-work writes down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from ghitwork.config import SCRUBBED_ENV

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
PIPE_GRACE = 2.0  # how long output pipes may stay open after the agent exited
CHUNK = 65536
MAX_LINE = 1024 * 1024  # longest line searched for a session id or forwarded

OutputSink = Callable[[str, str], None]  # (stream name, line)


@dataclass(frozen=True, slots=True)
class RunResult:
    """How an invocation ended. A failure is a value, never an exception."""

    agent: str
    event_ids: tuple[int, ...]
    command: tuple[str, ...]
    started: float
    ended: float
    pid: int | None = None
    returncode: int | None = None  # exit status; None when killed by a signal or not started
    signal: int | None = None
    error: str | None = None  # could not start
    timed_out: bool = False
    stopped: bool = False  # terminated because ghit-work stopped: its events come again
    session_id: str | None = None
    resumed: bool = False
    log_files: tuple[str, ...] = ()
    last_stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)

    def describe(self) -> str:
        if self.error is not None:
            return self.error
        if self.timed_out:
            return "timed out"
        if self.signal is not None:
            name = signal.Signals(self.signal).name if self.signal in _SIGNALS else str(self.signal)
            return f"killed by {name}"
        return f"exit {self.returncode}"


_SIGNALS = {s.value for s in signal.Signals}


def agent_environment(
    base: Mapping[str, str], extra: Mapping[str, str], name: str
) -> dict[str, str]:
    """ghit-work's environment without the ghit credentials, plus the agent's `env`."""
    env = {key: value for key, value in base.items() if key not in SCRUBBED_ENV}
    env.update(extra)
    env["GHIT_WORK_AGENT"] = name
    return env


class Redactor:
    """Replaces secrets in a byte stream, also when one straddles two chunks."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = [s.encode() for s in secrets if len(s) >= 4]
        self._keep = max((len(s) for s in self._secrets), default=1) - 1
        self._carry = b""

    def text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret.decode(), "***")
        return text

    def feed(self, chunk: bytes) -> bytes:
        if not self._secrets:
            return chunk
        data = self._carry + chunk
        for secret in self._secrets:
            data = data.replace(secret, b"***")
        if self._keep:
            data, self._carry = data[: -self._keep], data[-self._keep :]
        return data

    def flush(self) -> bytes:
        data, self._carry = self._carry, b""
        for secret in self._secrets:
            data = data.replace(secret, b"***")
        return data


@dataclass
class LogFiles:
    """The archive of one invocation: `<stamp>-<agent>.{prompt,stdout,stderr,json}`."""

    stem: Path

    @classmethod
    def create(cls, logdir: Path, agent: str, started: float) -> LogFiles:
        logdir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return cls(logdir / f"{stamp}-{agent}")

    def path(self, suffix: str) -> Path:
        return self.stem.with_name(f"{self.stem.name}.{suffix}")

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(str(self.path(s)) for s in ("prompt", "stdout", "stderr", "json"))


def _iso(moment: float) -> str:
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class _Stream:
    name: str
    sink: IO[bytes] | None
    redactor: Redactor
    pattern: re.Pattern[str] | None
    forward: OutputSink | None
    partial: bytes = b""
    session_id: str | None = None
    last_line: str = ""
    lines: list[str] = field(default_factory=list)

    def chunk(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.write(self.redactor.feed(data))
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        if len(self.partial) > MAX_LINE:
            complete.append(self.partial)
            self.partial = b""
        for raw in complete:
            self.line(raw)

    def line(self, raw: bytes) -> None:
        text = raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        if self.pattern is not None:
            match = self.pattern.search(text)
            if match:
                found = match.groupdict().get("session_id") or match.group(1)
                if found:
                    self.session_id = found
        if text.strip():
            self.last_line = self.redactor.text(text)[:500]
            if self.forward is not None:
                self.forward(self.name, self.last_line)

    def close(self) -> None:
        if self.partial:
            self.line(self.partial)
            self.partial = b""
        if self.sink is not None:
            self.sink.write(self.redactor.flush())
            self.sink.close()


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
        logdir: Path | None = None,
        session_pattern: re.Pattern[str] | None = None,
        resumed: bool = False,
        secrets: Sequence[str] = (),
        forward: OutputSink | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        self.agent = agent
        self.argv = tuple(argv)
        self.prompt = prompt
        self.workdir = workdir
        self.env = dict(env)
        self.event_ids = tuple(event_ids)
        self.timeout = timeout
        self.logdir = logdir
        self.session_pattern = session_pattern
        self.resumed = resumed
        self.secrets = tuple(secrets)
        self.forward = forward
        self.on_start = on_start
        self.pid: int | None = None
        self._stop_reason: str | None = None
        self._requeue = False
        self._timed_out = False
        self._killer: asyncio.TimerHandle | None = None
        self._process: asyncio.subprocess.Process | None = None

    def terminate(self, reason: str = "stopped", requeue: bool = False) -> None:
        """SIGTERM to the agent's process group, SIGKILL after KILL_GRACE. With `requeue`
        (ghit-work is stopping) the run counts as unfinished and its events come again."""
        self._stop_reason = self._stop_reason or reason
        self._requeue = self._requeue or requeue
        if self._process is None or self._process.returncode is not None:
            return
        self._signal_group(signal.SIGTERM)
        if self._killer is None:
            loop = asyncio.get_running_loop()
            self._killer = loop.call_later(KILL_GRACE, self._signal_group, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the agent's process group now."""
        self._stop_reason = self._stop_reason or "killed"
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    async def run(self) -> RunResult:
        started = time.time()
        redactor = Redactor(self.secrets)
        logs: LogFiles | None = None
        if self.logdir is not None:
            try:
                logs = LogFiles.create(self.logdir, self.agent, started)
                write_atomic(logs.path("prompt"), redactor.text(self.prompt).encode())
            except OSError as error:
                return RunResult(
                    agent=self.agent,
                    event_ids=self.event_ids,
                    command=self.argv,
                    started=started,
                    ended=time.time(),
                    resumed=self.resumed,
                    error=f"cannot write logs in {self.logdir}: {error.strerror or error}",
                )
        result = await self._run(started, logs)
        if logs is not None:
            with contextlib.suppress(OSError):
                self._write_record(logs, result)
        return result

    async def _run(self, started: float, logs: LogFiles | None) -> RunResult:
        def failed(message: str) -> RunResult:
            return RunResult(
                agent=self.agent,
                event_ids=self.event_ids,
                command=self.argv,
                started=started,
                ended=time.time(),
                error=message,
                resumed=self.resumed,
                log_files=logs.all if logs else (),
            )

        if not self.workdir.is_dir():
            return failed(f"workdir {self.workdir} does not exist")
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
                limit=CHUNK,
            )
        except FileNotFoundError:
            return failed(f"command not found: {self.argv[0]}")
        except PermissionError:
            return failed(f"permission denied: {self.argv[0]}")
        except OSError as error:
            return failed(f"cannot start {self.argv[0]}: {error.strerror or error}")
        self._process = process
        self.pid = process.pid
        if self.on_start is not None:
            self.on_start(process.pid)
        if self._stop_reason is not None:
            self.terminate(self._stop_reason)
        streams = [
            _Stream(
                name,
                open(logs.path(name), "wb") if logs else None,  # noqa: SIM115 closed by _Stream.close
                Redactor(self.secrets),
                self.session_pattern,
                self.forward,
            )
            for name in ("stdout", "stderr")
        ]
        assert process.stdout is not None and process.stderr is not None
        pumps = [
            asyncio.ensure_future(_pump(process.stdout, streams[0])),
            asyncio.ensure_future(_pump(process.stderr, streams[1])),
        ]
        feeder = asyncio.ensure_future(self._feed(process))
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), self.timeout)
        except TimeoutError:
            self._timed_out = True
            self.terminate("timed out")
            await process.wait()
        except asyncio.CancelledError:
            self.terminate("cancelled")
            await process.wait()
            raise
        finally:
            feeder.cancel()
        # Whatever the agent left behind in its group goes too: no orphan outlives its run.
        self._signal_group(signal.SIGTERM)
        _, still_open = await asyncio.wait(pumps, timeout=PIPE_GRACE)
        if still_open:
            self._signal_group(signal.SIGKILL)
            for pump in still_open:
                pump.cancel()
            await asyncio.wait(still_open)
        if self._killer is not None:
            self._killer.cancel()
        for stream in streams:
            stream.close()
        code = process.returncode
        session = streams[0].session_id or streams[1].session_id
        return RunResult(
            agent=self.agent,
            event_ids=self.event_ids,
            command=self.argv,
            started=started,
            ended=time.time(),
            pid=process.pid,
            returncode=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            timed_out=self._timed_out,
            stopped=self._requeue and not self._timed_out,
            session_id=session,
            resumed=self.resumed,
            log_files=logs.all if logs else (),
            last_stderr=streams[1].last_line,
        )

    async def _feed(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None
        try:
            process.stdin.write(self.prompt.encode())
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent does not read its prompt; its exit status tells the rest
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.close()

    def _write_record(self, logs: LogFiles, result: RunResult) -> None:
        redactor = Redactor(self.secrets)
        record = {
            "agent": result.agent,
            "start": _iso(result.started),
            "end": _iso(result.ended),
            "duration": round(result.duration, 3),
            "exit_status": result.returncode,
            "signal": signal.Signals(result.signal).name if result.signal in _SIGNALS else None,
            "error": result.error,
            "timed_out": result.timed_out,
            "stopped": result.stopped,
            "event_ids": list(result.event_ids),
            "session_id": result.session_id,
            "resumed": result.resumed,
            "command": list(result.command),
            "pid": result.pid,
        }
        text = redactor.text(json.dumps(record, indent=2)) + "\n"
        write_atomic(logs.path("json"), text.encode())


async def _pump(reader: asyncio.StreamReader, stream: _Stream) -> None:
    while True:
        data = await reader.read(CHUNK)
        if not data:
            return
        stream.chunk(data)
