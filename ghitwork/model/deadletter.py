"""A dead letter: a batch that failed every attempt (SPEC §8), as journaled and listed."""

from __future__ import annotations

from typing import Any

import msgspec

from ghitwork.model.formatting import iso


class DeadLetter(msgspec.Struct, frozen=True):
    id: int
    agent: str
    events: tuple[dict[str, Any], ...]  # the whole event objects, in id order
    attempts: int
    exit_status: int | None  # None when the last attempt had none (killed, timed out, ...)
    error: str  # what the last attempt ended with: "exit 1", "timed out after 30m", ...
    time: float
    conversation: str = ""  # SPEC §12: the conversation the batch belonged to

    @property
    def event_ids(self) -> list[int]:
        return [int(event["id"]) for event in self.events]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "event_ids": self.event_ids,
            "attempts": self.attempts,
            "exit_status": self.exit_status,
            "error": self.error,
            "time": iso(self.time),
            "conversation": self.conversation,
            "events": list(self.events),
        }

    def record(self) -> dict[str, Any]:
        """As journaled and snapshotted (time as a number)."""
        return {**self.to_json(), "time": self.time}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> DeadLetter:
        return cls(
            id=int(data["id"]),
            agent=str(data["agent"]),
            events=tuple(data["events"]),
            attempts=int(data["attempts"]),
            exit_status=data.get("exit_status"),
            error=str(data.get("error", "")),
            time=float(data["time"]),
            conversation=str(data.get("conversation") or ""),
        )
