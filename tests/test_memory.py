"""Memory given back once a load is over (system/memory.py): when, and that it is."""

from __future__ import annotations

import platform
import signal
import subprocess
import threading

import pytest
from conftest import GHIT_WORK, Setup, event, poll, write_events

from ghitwork.system import memory
from ghitwork.system.memory import QUIET, Quiet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_memory_is_given_back_once_a_quiet_spell_has_lasted() -> None:
    clock, version, given = Clock(), [0], []

    def release() -> None:
        given.append(clock.now)
        version[0] += 1  # its own status line is a change: it must not start another spell

    quiet = Quiet(lambda: version[0], clock)
    for _ in range(3):  # busy: a change at every tick, however long
        clock.now += QUIET
        version[0] += 1
        assert not quiet.tick(release)
    clock.now += QUIET - 0.5
    assert not quiet.tick(release), "not quiet for QUIET yet"
    clock.now += 0.5
    assert quiet.tick(release)
    for _ in range(5):  # once a spell, however long it lasts
        clock.now += QUIET
        assert not quiet.tick(release)
    version[0] += 1  # the views let idle conversations go: a change, then a new spell
    assert not quiet.tick(release)
    clock.now += QUIET
    assert quiet.tick(release)
    assert given == [100.0 + 4 * QUIET, 100.0 + 10 * QUIET]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_free_heap_pages_below_a_block_in_use_go_back_to_the_os() -> None:
    """40 MB of 4 KB blocks from glibc's heap, every one freed but one in 64: glibc keeps the
    pages between the blocks still in use; `release` hands them back."""
    blocks = [bytes(4000) for _ in range(10_000)]
    kept = blocks[::64]
    del blocks
    before = memory.resident_mb()
    assert before is not None
    assert memory.release()
    after = memory.resident_mb()
    assert after is not None
    assert before - after > 20, f"resident {before:.1f} -> {after:.1f} MB"
    assert len(kept) == 157


def test_the_daemon_gives_memory_back_once_quiet(setup: Setup) -> None:
    """Through the real command: a run, then nothing for QUIET seconds: the debug status line
    says the free heap pages were given back, once while it stays quiet."""
    setup.write_config({"a": {}}, tail=["--follow"])
    write_events(setup.events, [event(1)])
    process = subprocess.Popen(
        [GHIT_WORK, "--log-level", "debug"], cwd=setup.path, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
    reader.start()

    def given_back() -> list[str]:
        return [line for line in list(lines) if "free heap pages given back" in line]

    try:
        poll(lambda: setup.delivered("a") == [1], what="the run")
        found = poll(given_back, timeout=QUIET + 20, what="memory given back")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=10)
    process.stderr.close()
    assert "memory: quiet for 10s: free heap pages given back, resident" in found[0], found
    assert found[0].rstrip().endswith(" MB") and " -> " in found[0]
    assert len(given_back()) == 1, "once per quiet spell"
