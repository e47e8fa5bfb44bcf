"""What ghit-work writes down about a run: `logdir` archives, with the ghit token redacted.

    <logdir>/<stamp>-<agent>.prompt   the prompt the run was given
    <logdir>/<stamp>-<agent>.stdout   its stdout, as printed
    <logdir>/<stamp>-<agent>.stderr   its stderr, as printed
    <logdir>/<stamp>-<agent>.json     the record: start, end, exit status, event ids, ...

The stamp sorts by time, so `ls` lists runs in the order they started. A logdir ghit-work
creates is 0700, and every file it writes there 0600 (files.py): they hold prompts and output.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from ghitwork.model.formatting import iso
from ghitwork.model.redact import Redactor as Redactor
from ghitwork.model.results import SIGNALS, RunResult
from ghitwork.model.usage import GROUPS as USAGE_GROUPS  # re-exported (runner, output)
from ghitwork.system import files


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` (0600) so a reader sees the old file or the new one, never
    half; an OSError when it cannot (files.write_atomic)."""
    files.write_atomic(path, data)


class LogFiles(msgspec.Struct):
    """The archive of one invocation: `<stamp>-<agent>.{prompt,stdout,stderr,json}`."""

    stem: Path

    @classmethod
    def create(cls, logdir: Path, agent: str, started: float) -> LogFiles:
        """The archive's names, in `logdir` (made owner-only if it is missing). Its stdout
        and stderr files are made here, 0600, so that opening them to write keeps that mode
        whatever the umask; an OSError when they cannot be."""
        files.make_dir(logdir)
        stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        logs = cls(logdir / f"{stamp}-{agent}")
        for name in ("stdout", "stderr"):
            os.close(files.open_fd(logs.path(name), os.O_WRONLY))
        return logs

    def path(self, suffix: str) -> Path:
        return self.stem.with_name(f"{self.stem.name}.{suffix}")

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(str(self.path(s)) for s in ("prompt", "stdout", "stderr", "json"))

    def write_record(self, record: Mapping[str, Any], secrets: Sequence[str]) -> None:
        text = Redactor(secrets).text(json.dumps(record, indent=2)) + "\n"
        write_atomic(self.path("json"), text.encode())


def record_of(result: RunResult) -> dict[str, object]:
    """The run's logdir record."""
    return {
        "agent": result.agent,
        "conversation": result.conversation,
        "start": iso(result.started),
        "end": iso(result.ended),
        "duration": round(result.duration, 3),
        "exit_status": result.returncode,
        "signal": signal.Signals(result.signal).name if result.signal in SIGNALS else None,
        "error": result.error,
        "fault": result.fault,
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
