"""How ids and moments are written for people and logs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ghitwork.model.durations import clock_time


def iso(moment: float) -> str:
    return (
        datetime.fromtimestamp(moment, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def id_ranges(ids: Sequence[int], most: int = 8) -> str:
    """1,2,3,7,9,10 -> "1-3,7,9-10"; long lists are cut with "… (N in all)"."""
    parts: list[str] = []
    start = prev = None
    for ident in ids:
        if prev is not None and ident == prev + 1:
            prev = ident
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = ident
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    if len(parts) > most:
        return ",".join(parts[:most]) + f",… ({len(ids)} in all)"
    return ",".join(parts)


def pause_text(until: float | None, by: str, reason: str) -> str:
    """`paused until 17:41:00Z by alice: deploy`, as every surface says it (SPEC §13)."""
    when = f" until {clock_time(until)}" if until is not None else ""
    why = f": {reason}" if reason else ""
    return f"paused{when} by {by or 'the operator'}{why}"


def quota_text(account: str, until: float, own: bool) -> str:
    """`quota until 17:41:00Z (account max)`; `(its own account)` for an agent without one."""
    whose = "its own account" if own else f"account {account}"
    return f"quota until {clock_time(until)} ({whose})"
