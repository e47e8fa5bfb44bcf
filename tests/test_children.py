"""The children registry: what a crashed instance left is recognised safely, never a reused pid."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from ghitwork.children import Children, boot_id, end_left_behind, left_behind


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
