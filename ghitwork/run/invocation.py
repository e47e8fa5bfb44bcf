"""One agent invocation: a subprocess in its own process group, fed the prompt on stdin.

A run ends when the agent process exits, not when its pipes close: something it started in
the background may hold stdout open for hours. After the exit its output is read for at most
PIPE_GRACE seconds more; then whatever is left in its process group gets SIGTERM, and SIGKILL
KILL_GRACE seconds later, while the agent's next batch is already free to start.

The agent is started by `start()`, where the run is decided, not when `run()`'s task first
runs; stdout and stderr are read by the loop (system/process.py; no task per pipe), archived to
`logdir` when set and searched line by line (output.py); the ghit token is redacted from every
byte ghit-work writes down.

One run is one failure domain (SPEC §11): an exception while preparing, starting, reading,
accounting or recording it (a log write on a full disk, a value the OS refuses, a bug in a
callback) becomes the run's `fault`, outcome `error`, never an exception out of `run()` or into
asyncio's handler. A run that faults while its agent runs has the agent ended (SIGTERM to its
group, SIGKILL later) and waited for, so the process-group bookkeeping stays right.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from msgspec.structs import replace

from ghitwork.model.results import RunResult
from ghitwork.model.usage import Pricing, Tally
from ghitwork.run.archive import LogFiles, Redactor, record_of, write_atomic
from ghitwork.run.output import Findings, OutputSink, Patterns, Stream
from ghitwork.run.spec import fault_text
from ghitwork.system.children import marked
from ghitwork.system.groups import KILL_GRACE as KILL_GRACE
from ghitwork.system.groups import signal_group, terminate_group
from ghitwork.system.process import Child, cannot_start

PIPE_GRACE = 2.0  # how long output is still read after the agent exited

# `on_start(pgid)` when a process group starts, `on_gone(pgid)` once nothing of it is left.
GroupHook = Callable[[int], None]
NO_PATTERNS = Patterns()


class Why(enum.Enum):
    """Why ghit-work ended a run before the agent did."""

    STOPPING = "ghit-work is stopping"  # not finished: its batch comes again
    OPERATOR = "stopped by the operator"  # not retried: a dead letter at once
    TIMEOUT = "timed out"
    STALL = "stalled"
    FAULT = "ghit-work failed watching it"  # the run's `fault` says how


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
        pricing: Pricing | None = None,
        conversation: str = "",
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
        self.conversation = conversation
        self.secrets = tuple(secrets)
        self.forward = forward
        self.on_start = on_start
        self.on_gone = on_gone
        self.pricing = pricing
        self.pid: int | None = None
        self.fault: str | None = None  # the first exception of ghit-work's own, as text
        self._why: Why | None = None
        self._exited = False  # the agent process exited: the run has ended
        self._killer: asyncio.TimerHandle | None = None
        self._started = 0.0  # time.time() of start()
        self._logs: LogFiles | None = None
        self._findings = Findings()
        self._streams: dict[int, Stream] = {}
        self._child: Child | None = None
        self._early: RunResult | None = None  # it could not start: the run's result
        self._watched = False  # run() has taken over from start()
        self._broken = False  # reading its output failed once: the rest is read and dropped
        self._last_output = time.monotonic()

    def terminate(self, why: Why) -> None:
        """SIGTERM to the agent's process group, SIGKILL after KILL_GRACE. Once the agent
        has exited the run has ended as it did (a stop during the output drain does not
        make an exit 0 `stopped`); what it left is ended after the drain."""
        if self._exited:
            return
        if self._why is None or why is Why.STOPPING:
            self._why = why
        if self.pid is None:
            return
        if self._killer is None:
            self._killer = terminate_group(self.pid, KILL_GRACE)
        else:
            signal_group(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the agent's process group now."""
        if not self._exited:
            self._why = self._why or Why.STOPPING
        signal_group(self.pid, signal.SIGKILL)

    def _failed(self, stage: str, error: BaseException) -> None:
        """ghit-work's own failure while `stage` (an exception, not the agent's doing): the
        run's fault; an agent still running is ended."""
        if self.fault is None:
            self.fault = f"{stage}: {fault_text(error)}"
        self.terminate(Why.FAULT)

    def start(self) -> None:
        """Start the agent now, where the run is decided, not when `run()`'s task first
        runs (system/process.py); never raises: a failure becomes the run's result."""
        if self._started:
            return
        self._started = time.time()
        try:
            self._early = self._start()
        except Exception as error:  # a bug: nothing was started (Child.start cleans up)
            self._close()
            self._early = self._result(fault=f"starting it: {fault_text(error)}")

    def _start(self) -> RunResult | None:
        """The run's result when it cannot start; None once the agent is running."""
        if self.logdir is not None:
            try:
                self._logs = LogFiles.create(self.logdir, self.agent, self._started)
                prompt = Redactor(self.secrets).text(self.prompt).encode()
                write_atomic(self._logs.path("prompt"), prompt)
            except OSError as error:  # SPEC §11: ghit-work's own fault, outcome error
                why = f"cannot write logs in {self.logdir}: {error.strerror or error}"
                return self._result(fault=why)
            except Exception as error:
                return self._result(fault=f"writing its prompt: {fault_text(error)}")
        return self._spawn()

    def _spawn(self) -> RunResult | None:
        logs, files = self._logs, self._logs.all if self._logs else ()
        try:
            missing, why = not self.workdir.is_dir(), f"workdir {self.workdir} does not exist"
        except OSError as error:  # a directory on its path it may not enter
            missing, why = True, f"workdir {self.workdir}: {error.strerror or error}"
        if missing:
            return self._result(error=why, log_files=files)
        streams = self._streams
        try:
            for fd, name in ((1, "stdout"), (2, "stderr")):
                sink = open(logs.path(name), "wb") if logs else None  # noqa: SIM115 Stream.close
                streams[fd] = Stream(
                    name, sink, Redactor(self.secrets), self.patterns, self._findings, self.forward
                )
        except Exception as error:  # not the command's doing: ghit-work's own fault
            self._close()
            return self._result(fault=f"opening its logs: {fault_text(error)}", log_files=files)
        try:  # recognisable from its first instruction (children.py)
            self._child = child = Child.start(self.argv, self.workdir, marked(self.env))
        except OSError as error:
            self._close()
            if error.errno == errno.E2BIG:  # its argv and environment: a value the OS refuses
                fault = f"starting {self.argv[0]}: {fault_text(error)}"
                return self._result(fault=fault, log_files=files)
            error_text = cannot_start(self.argv[0], error)  # not found, not executable...
            return self._result(error=error_text, log_files=files)
        except Exception as error:  # a value the OS refuses (a NUL byte), a bug: nothing runs
            self._close()
            fault = f"starting {self.argv[0]}: {fault_text(error)}"
            return self._result(fault=fault, log_files=files)
        self.pid = child.pid
        try:
            if self.on_start is not None:
                self.on_start(self.pid)
        except Exception as error:
            self._failed("starting it", error)
        try:  # its output is read, whatever else failed
            child.watch(self._output, self.prompt.encode())
            self.prompt = ""  # not held while the run lasts (a batch of thousands: megabytes)
        except Exception as error:
            self._failed("starting it", error)
        return None

    def _output(self, fd: int, data: bytes) -> None:
        self._last_output = time.monotonic()
        stream = self._streams.get(fd)
        if stream is None or self._broken:
            return
        try:
            stream.chunk(data)
        except Exception as error:  # its logdir, a pattern, the forward callback: the run's
            self._broken = True
            self._failed(f"reading its {stream.name}", error)

    def abandon(self) -> None:
        """`run()` will not run (its task was cancelled before it began): the agent started
        is stopped, and once it has exited, what it left is ended and its pipes closed."""
        child = self._child
        if self._watched or child is None:
            return
        self.terminate(Why.STOPPING)

        def ended(_: object) -> None:
            self._exited = True
            if self._killer is not None:
                self._killer.cancel()
            self._finish(child)

        child.exited.add_done_callback(ended)

    async def run(self) -> RunResult:
        """The run's result; never raises (but for cancellation): see the module's doc."""
        self.start()
        self._watched = True
        if self._early is not None:
            return self._early
        logs = self._logs
        try:
            result, tally = await self._run()
        except Exception as error:  # _run has ended the agent before raising
            self._failed("running it", error)
            return self._result(pid=self.pid, fault=self.fault, log_files=logs.all if logs else ())
        if self.pricing is not None:
            try:
                charged = self.pricing.charge(self.agent, tally, result.session_id, result.ended)
                result = result if charged is None else replace(result, charge=charged)
            except Exception as error:
                fault = f"accounting its usage: {fault_text(error)}"
                result = replace(result, fault=result.fault or fault)
        if logs is not None:
            try:
                logs.write_record(record_of(result), self.secrets)
            except Exception as error:
                fault = f"writing its record {logs.path('json')}: {fault_text(error)}"
                result = replace(result, fault=result.fault or fault)
        return result

    def _result(self, **fields: object) -> RunResult:
        return RunResult(
            agent=self.agent,
            event_ids=self.event_ids,
            command=self.argv,
            started=self._started,
            ended=time.time(),
            resumed=self.resumed,
            attempt=self.attempt,
            limits=(self.timeout, self.stall_timeout),
            conversation=self.conversation,
            **fields,  # type: ignore[arg-type]
        )

    async def _run(self) -> tuple[RunResult, Tally]:
        child, streams, findings = self._child, self._streams, self._findings
        assert child is not None  # start() started it, or its result is _early
        files = self._logs.all if self._logs else ()
        if self._why is not None:
            self.terminate(self._why)
        try:
            await self._watch(child)
        except asyncio.CancelledError:
            self.terminate(Why.STOPPING)
            await asyncio.shield(child.exited)
            self._exited = True
            self._finish(child)
            raise
        except Exception as error:  # watching it failed: it is ended all the same
            self._failed("watching it", error)
            await asyncio.shield(child.exited)  # SIGKILL comes KILL_GRACE after SIGTERM
        finally:
            self._exited = True
            if self._killer is not None:
                self._killer.cancel()
        # The agent has exited: its own status and duration. Read what is still in the pipes
        # for a moment, then end whatever it left behind in its group.
        ended = time.time()
        try:
            await asyncio.wait(list(child.closed.values()), timeout=PIPE_GRACE)
        finally:  # (cancelled too: what it left is ended, its files closed)
            self._finish(child)
        code = child.returncode
        why = self._why
        failed = not (code == 0 and why is None)
        quota = None
        if failed and findings.reset:  # read against when it was printed, not the run's end
            from ghitwork.model.quota import reset_at  # its regexes and zoneinfo: on first use

            quota = reset_at(findings.reset, findings.reset_read or ended)
        result = RunResult(
            agent=self.agent,
            event_ids=self.event_ids,
            command=self.argv,
            started=self._started,
            ended=ended,
            pid=self.pid,
            returncode=code if code is not None and code >= 0 else None,
            signal=-code if code is not None and code < 0 else None,
            fault=self.fault,
            timed_out=why is Why.TIMEOUT,
            stalled=why is Why.STALL,
            stopped=why is Why.STOPPING,
            operator_stopped=why is Why.OPERATOR,
            rate_limited=failed and findings.rate_limited and why not in (Why.STOPPING, Why.FAULT),
            needs_input=findings.needs_input and why not in (Why.STOPPING, Why.FAULT),
            question=findings.question,
            retry_after=findings.retry_after,
            quota_until=quota,
            limit_line=findings.limit_line if quota is not None else "",
            session_id=findings.session_id,
            resumed=self.resumed,
            attempt=self.attempt,
            log_files=files,
            last_stderr=streams[2].last_line,
            limits=(self.timeout, self.stall_timeout),
            conversation=self.conversation,
        )
        return result, findings.tally

    def _finish(self, child: Child) -> None:
        """After the agent's exit: what it left is ended, its pipes and files closed."""
        try:
            self._end_leftovers()
        except Exception as error:
            self._failed("ending what it left running", error)
        try:
            child.close()
        except Exception as error:
            self._failed("closing its pipes", error)
        self._close()

    def _close(self) -> None:
        for stream in self._streams.values():
            try:
                stream.close()
            except Exception as error:
                self._failed(f"closing its {stream.name}", error)

    async def _watch(self, child: Child) -> None:
        """Until the agent process exits, ending it when it runs past `timeout` or prints
        nothing for `stall_timeout`."""
        began = time.monotonic()
        while not child.exited.done():
            deadlines: list[tuple[float, Why]] = []
            if self._why is None:
                if self.timeout is not None:
                    deadlines.append((began + self.timeout, Why.TIMEOUT))
                if self.stall_timeout is not None:
                    deadlines.append((self._last_output + self.stall_timeout, Why.STALL))
            wait = None
            if deadlines:
                due, why = min(deadlines, key=lambda deadline: deadline[0])
                wait = due - time.monotonic()
                if wait <= 0:
                    self.terminate(why)
                    continue
            await asyncio.wait([child.exited], timeout=wait)

    def _end_leftovers(self) -> None:
        """SIGTERM what is left of the run's process group; SIGKILL it KILL_GRACE later."""
        pgid = self.pid
        if pgid is not None:
            terminate_group(pgid, KILL_GRACE, then=lambda: self._gone(pgid))

    def _gone(self, pgid: int) -> None:
        if self.on_gone is None:
            return
        try:
            self.on_gone(pgid)
        except Exception as error:  # later than the result: kept on the invocation
            self.fault = self.fault or f"forgetting its process group: {fault_text(error)}"
