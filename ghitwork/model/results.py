"""How a run ended: a value, never an exception."""

from __future__ import annotations

import signal

import msgspec

from ghitwork.model.durations import format_duration
from ghitwork.model.usage import Charge, Usage


class RunResult(msgspec.Struct, frozen=True):
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
    # ghit-work itself failed while preparing, running or recording the run (an exception:
    # an OSError writing its logs, a value the OS refused, a bug): the run's outcome is
    # `error`, and its batch is retried and dead-lettered like any failed run (SPEC §11).
    fault: str | None = None
    timed_out: bool = False
    stalled: bool = False
    stopped: bool = False  # terminated because ghit-work stopped: its events come again
    operator_stopped: bool = False
    rate_limited: bool = False  # failed, and its output matched rate_limit_pattern
    retry_after: float | None = None  # seconds the rate limit asked to wait
    session_id: str | None = None
    resumed: bool = False
    attempt: int = 1
    log_files: tuple[str, ...] = ()
    last_stderr: str = ""
    limits: tuple[float | None, float | None] = (None, None)  # (timeout, stall_timeout)
    charge: Charge | None = None  # its token use and cost, when its output told them
    conversation: str = ""  # SPEC §12: "" is the agent's own conversation
    needs_input: bool = False  # its output matched needs_input_pattern (SPEC §13)
    question: str | None = None  # what it asks, when the pattern names it
    # SPEC §14: when its account's usage limit resets, read from its output (`reset`)
    quota_until: float | None = None
    limit_line: str = ""  # the output line that said so

    @classmethod
    def of_fault(
        cls,
        agent: str,
        event_ids: tuple[int, ...],
        command: tuple[str, ...],
        moment: float,
        fault: str,
        *,
        pid: int | None = None,
        resumed: bool = False,
        attempt: int = 1,
        conversation: str = "",
    ) -> RunResult:
        """A run that ghit-work itself failed (SPEC §11), at `moment`."""
        return cls(
            agent=agent,
            event_ids=event_ids,
            command=command,
            started=moment,
            ended=moment,
            pid=pid,
            fault=fault,
            resumed=resumed,
            attempt=attempt,
            conversation=conversation,
        )

    @property
    def usage(self) -> Usage | None:
        return self.charge.usage if self.charge is not None else None

    @property
    def ok(self) -> bool:
        return (
            self.returncode == 0
            and self.error is None
            and self.fault is None
            and not (self.timed_out or self.stalled or self.operator_stopped)
        )

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)

    @property
    def outcome(self) -> str:
        """`ok`, `failed`, `timeout`, `stalled`, `killed`, `rate_limited` or `error` (the
        metrics' outcome label)."""
        if self.ok:
            return "ok"
        if self.fault is not None:
            return "error"
        if self.rate_limited:
            return "rate_limited"
        if self.timed_out:
            return "timeout"
        if self.stalled:
            return "stalled"
        if self.signal is not None or self.operator_stopped:
            return "killed"
        return "failed"

    def describe(self) -> str:
        if self.fault is not None:
            return f"error: {self.fault}"
        if self.error is not None:
            return self.error
        timeout, stall = self.limits
        if self.timed_out:
            return "timed out" + (f" after {format_duration(timeout)}" if timeout else "")
        if self.stalled:
            return "stalled" + (f" (no output for {format_duration(stall)})" if stall else "")
        if self.operator_stopped:
            return "stopped by the operator"
        if self.signal is not None:
            name = signal.Signals(self.signal).name if self.signal in SIGNALS else str(self.signal)
            return f"killed by {name}"
        return f"exit {self.returncode}"


SIGNALS = {s.value for s in signal.Signals}
