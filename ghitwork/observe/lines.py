"""What a state change says as a status line: `describe` (one handler per Change type) turns a
change into a `Line` (observe/status.py prints it, as text or JSON).

The base (`Line`, `describe`, `only_info`) is observe/line.py; the handlers live in
observe/run_lines.py (a run, an agent's or a conversation's state) and
observe/notice_lines.py (the event stream, notices, dead letters, stopping). Importing this
module registers them all, so its `describe` knows every Change type."""

from __future__ import annotations

from ghitwork.observe import notice_lines as notice_lines
from ghitwork.observe import run_lines as run_lines
from ghitwork.observe.line import (
    LEVELS,
    Line,
    count_events,
    describe,
    lines_of,
    only_info,
    printable,
    routed_line,
    timestamp,
)

__all__ = [
    "LEVELS",
    "Line",
    "count_events",
    "describe",
    "lines_of",
    "only_info",
    "printable",
    "routed_line",
    "timestamp",
]
