"""tail-events' stdout, read by the source: bursts per read, and the backlog behind them."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from ghitwork.bus.changes import EventSkipped, StateBus
from ghitwork.model.events import Event
from ghitwork.source.tail import TailSource, _grow_pipe, _Lines, _waiting


def line(ident: int) -> bytes:
    return json.dumps({"id": ident, "kind": "k", "scopes": ["team:t"], "pad": "x" * 200}).encode()


def test_each_read_is_a_burst_and_says_whether_more_is_waiting_in_the_pipe() -> None:
    said: list[object] = []
    bus = StateBus()
    bus.changes.subscribe(lambda change: said.append(change))

    def emit(burst: list[Event]) -> None:
        said.append([event.id for event in burst])

    source = TailSource(
        argv=lambda cursor: [],
        cwd=Path("."),
        env={},
        bus=bus,
        emit=emit,
        drain=True,
        window=lambda: 1.0,
        backlog=said.append,
    )
    read_end, write_end = os.pipe()
    _grow_pipe(read_end)
    try:
        data = b"".join(line(i) + b"\n" for i in range(1, 201)) + b"not json\n" + line(201)
        os.write(write_end, data)
        assert _waiting(read_end) == len(data)
        loop = asyncio.new_event_loop()
        lines = _Lines(source, read_end, loop.create_future())
        lines.data_received(os.read(read_end, len(data) // 2))  # more is waiting
        lines.data_received(os.read(read_end, len(data)))  # the rest: caught up
        lines.connection_lost(None)  # the last line had no newline
        assert lines.ended.done()
        loop.close()
    finally:
        os.close(read_end)
        os.close(write_end)
    shape = [
        type(x).__name__ if isinstance(x, EventSkipped) else x if isinstance(x, bool) else "burst"
        for x in said
    ]
    assert shape == [True, "burst", "EventSkipped", "burst", False, "burst", False]
    bursts = [x for x in said if isinstance(x, list)]
    assert [i for burst in bursts for i in burst] == list(range(1, 202))
    assert len(bursts[0]) < 200, "the first read was half the data"
    assert source.cursor == 201 and source.events_seen == 201


def test_a_streams_first_events_are_held_even_with_nothing_waiting_behind_them() -> None:
    """tail-events may have only begun to print a catch-up: its first read holds run starts
    (backlog True, then False: Slots lets them go after its settle); later reads that leave
    nothing waiting do not."""
    said: list[object] = []
    source = TailSource(
        argv=lambda cursor: [],
        cwd=Path("."),
        env={},
        bus=StateBus(),
        emit=lambda burst: said.append([event.id for event in burst]),
        drain=True,
        window=lambda: 1.0,
        backlog=said.append,
    )
    read_end, write_end = os.pipe()
    try:
        loop = asyncio.new_event_loop()
        lines = _Lines(source, read_end, loop.create_future())
        for first in (1, 3):
            os.write(write_end, line(first) + b"\n" + line(first + 1) + b"\n")
            lines.data_received(os.read(read_end, 65536))
        loop.close()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert said == [True, [1, 2], False, [3, 4], False]
