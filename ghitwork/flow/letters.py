"""The dead letters kept (SPEC §8): a batch that failed for good is numbered and held here
until it is handed back. The agent buries its own batch (it decides what a result means);
the journal writes the letter, fsynced, when the RunFinished carrying it is published."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ghitwork.model.deadletter import DeadLetter
from ghitwork.model.events import Event
from ghitwork.model.results import RunResult


class DeadLetters:
    def __init__(self, redact: Callable[[str], str] = lambda text: text) -> None:
        self.kept: dict[int, DeadLetter] = {}
        self.next_id = 1
        self.redact = redact  # the error text is shown and listed: redacted (SPEC §11)

    def bury(
        self, agent: str, batch: Sequence[Event], result: RunResult, conversation: str = ""
    ) -> DeadLetter:
        letter = DeadLetter(
            id=self.next_id,
            agent=agent,
            events=tuple(event.data for event in batch),
            attempts=result.attempt,
            exit_status=result.returncode,
            error=self.redact(result.describe()),
            time=result.ended,
            conversation=conversation,
        )
        self.next_id += 1
        self.kept[letter.id] = letter
        return letter

    def hand_back(self, ids: Iterable[int]) -> tuple[DeadLetter, ...]:
        """The letters among `ids` still kept, in id order; they are kept no more."""
        return tuple(self.kept.pop(i) for i in sorted(set(ids)) if i in self.kept)

    def load(self, records: dict[int, dict[str, Any]], next_id: int) -> None:
        self.kept = {i: DeadLetter.from_record(record) for i, record in records.items()}
        self.next_id = max(next_id, max(self.kept, default=0) + 1)

    def records(self) -> dict[int, dict[str, Any]]:
        return {i: letter.record() for i, letter in self.kept.items()}
