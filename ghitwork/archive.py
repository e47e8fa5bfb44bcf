"""What ghit-work writes down about a run: `logdir` archives, with the ghit token redacted.

    <logdir>/<stamp>-<agent>.prompt   the prompt the run was given
    <logdir>/<stamp>-<agent>.stdout   its stdout, as printed
    <logdir>/<stamp>-<agent>.stderr   its stderr, as printed
    <logdir>/<stamp>-<agent>.json     the record: start, end, exit status, event ids, ...

The stamp sorts by time, so `ls` lists runs in the order they started.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


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


def iso(moment: float) -> str:
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

    def write_record(self, record: Mapping[str, Any], secrets: Sequence[str]) -> None:
        text = Redactor(secrets).text(json.dumps(record, indent=2)) + "\n"
        write_atomic(self.path("json"), text.encode())
