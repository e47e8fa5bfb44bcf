"""The children registry: what a crashed instance left is recognised safely, never a reused pid."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from ghitwork.system.children import (
    MARK,
    RECORD_AFTER,
    Children,
    boot_id,
    end_left_behind,
    instance,
    left_behind,
)


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_a_recorded_group_that_still_runs_is_found_and_ended(tmp_path: Path) -> None:
    process = sleeper()
    try:
        registry = Children(tmp_path / "children")
        registry.open()
        registry.add(process.pid, "agent a")
        registry.close()
        [group] = left_behind(tmp_path / "children")
        assert (group.pgid, group.what) == (process.pid, "agent a")
        said: list[str] = []
        assert asyncio.run(end_left_behind(tmp_path / "children", said.append)) == 1
        assert process.wait(timeout=10) == -15, "SIGTERM first"
        assert said == [
            f"ending what a previous ghit-work left running: agent a (process group {process.pid})"
        ]
    finally:
        process.kill()
        process.wait()


def test_a_pid_reused_by_another_process_is_never_signalled(tmp_path: Path) -> None:
    process = sleeper()
    try:
        path = tmp_path / "children"
        lines = [{"boot": boot_id()}, {"+": process.pid, "t": 1, "what": "agent a"}]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        assert left_behind(path) == [], "same pid, other start time: not ours"
        asyncio.run(end_left_behind(path, lambda message: None))
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


def test_groups_that_ended_or_another_boot_are_forgotten(tmp_path: Path) -> None:
    process = sleeper()
    try:
        registry = Children(tmp_path / "children")
        registry.open()
        registry.add(process.pid, "tail-events")
        registry.remove(process.pid)
        registry.close()
        assert left_behind(tmp_path / "children") == []
        text = (tmp_path / "children").read_text().replace(boot_id(), "another-boot")
        text += json.dumps({"+": process.pid, "t": 0, "what": "x"}) + "\n"
        (tmp_path / "children").write_text(text)
        assert left_behind(tmp_path / "children") == [], "a reboot ended everything"
        (tmp_path / "children").write_text("{torn")
        assert left_behind(tmp_path / "children") == []
    finally:
        process.kill()
        process.wait()


def test_the_children_file_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "children"
    path.write_text("")
    path.chmod(0o644)  # an older instance's
    old = os.umask(0o022)
    try:
        registry = Children(path)
        registry.open()
        registry.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_process_carrying_a_previous_instances_mark_is_found_without_a_record(
    tmp_path: Path,
) -> None:
    """Killed before it recorded a run's group, an instance still named itself: what carries
    its mark is found (and what carries another's is not)."""
    path = tmp_path / "children"
    path.write_text(json.dumps({"boot": boot_id(), "instance": "1.2"}) + "\n")
    ours = marked_sleeper("1.2", "codex")
    other = marked_sleeper("3.4", "codex")
    try:
        [group] = left_behind(path)
        assert (group.pgid, group.pids) == (ours.pid, (ours.pid,))
        said: list[str] = []
        assert asyncio.run(end_left_behind(path, said.append)) == 1
        assert ours.wait(timeout=10) == -15 and other.poll() is None
        assert said == [
            "ending what a previous ghit-work left running: agent codex "
            f"(pid {ours.pid} in process group {ours.pid}, not a recorded group)"
        ]
    finally:
        for process in (ours, other):
            process.kill()
            process.wait()


def test_end_all_kills_what_ignores_sigterm_and_names_what_left_its_group(tmp_path: Path) -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], start_new_session=True, stdout=subprocess.PIPE
    )
    escaped = marked_sleeper(instance(), "a")
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
        registry = Children(tmp_path / "children")
        registry.open()
        registry.add(stubborn.pid, "agent a")
        said: list[str] = []
        assert asyncio.run(registry.end_all(said.append, grace=0.2)) == 2
        assert stubborn.wait(timeout=5) == -9 and escaped.wait(timeout=5) == -15
        assert said[0].startswith(
            "ending what this ghit-work started that is still running: "
            f"agent a (process group {stubborn.pid}), "
            f"agent a (pid {escaped.pid} in process group {escaped.pid}, not a recorded group); "
            "a cgroup ends these"
        )
        assert said[1] == "killed (SIGKILL) 1 group(s) that ignored SIGTERM"
        assert registry.live == {}
        registry.close()
        assert left_behind(tmp_path / "children") == []
    finally:
        for process in (stubborn, escaped):
            process.kill()
            process.wait()
        if stubborn.stdout is not None:
            stubborn.stdout.close()


STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


def marked_sleeper(mark: str, agent: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, MARK: mark, "GHIT_WORK_AGENT": agent}
    return subprocess.Popen(["sleep", "60"], start_new_session=True, env=env)


def test_a_ghit_work_started_by_an_agent_never_ends_itself(tmp_path: Path) -> None:
    """It carries the mark of the instance whose agent started it: it spares itself, its
    parent and its own group."""
    code = "from ghitwork.system.children import strays; print([s.pid for s in strays('9.9')])"
    env = {**os.environ, MARK: "9.9"}
    found = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


def test_in_the_loop_a_group_is_recorded_shortly_after_and_a_short_one_never(
    tmp_path: Path,
) -> None:
    """Reading /proc/PID/stat right after the exec waits for the new process (about 1 ms,
    the loop blocked): with a loop running, an agent's record is written RECORD_AFTER later,
    and a group that ended before then is never recorded (the mark covers the gap)."""
    kept, short = sleeper(), sleeper()
    path = tmp_path / "children"

    async def main() -> tuple[set[int], set[int]]:
        registry = Children(path)
        registry.open()
        registry.add(kept.pid, "agent a", soon=True)
        registry.add(short.pid, "agent b", soon=True)
        registry.remove(short.pid)  # its run ended at once
        at_once = set(registry.live)
        await asyncio.sleep(RECORD_AFTER * 3)
        later = set(registry.live)
        registry.close()
        return at_once, later

    try:
        at_once, later = asyncio.run(main())
        assert at_once == set()
        assert later == {kept.pid}
        assert [(g.pgid, g.what) for g in left_behind(path)] == [(kept.pid, "agent a")]
    finally:
        for process in (kept, short):
            process.kill()
            process.wait()
