"""docs/tui.md's screen captures are the real program's screens (issue 26 #6).

Each capture in tui.md follows a line `<!-- tui-capture: WIDTHxHEIGHT [KEY...] -->`. The test
runs the quickstart under tmux exactly as tui.md says (`ghit-work --tui -c
quickstart/ghit-work.toml`, its tail_cmd with `--follow` instead of `--delay 0.1`: one burst,
so the batches are the same every time, and the stream stays open), sends each capture's keys
(tmux key names) in turn, resizes the window to its size, and waits until the screen is the
capture. Masked on both sides: times of day, durations, costs, pids, session ids, and the
temp dir (`/tmp/gw-XXXXXXXX`, made the same length so that lines are cut at the same place).
A line cut by the screen's edge may be cut elsewhere when a masked value has another length.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GHIT_WORK, ROOT, end_leftovers, poll
from test_tui_tmux import Tmux

DOC = ROOT / "docs" / "tui.md"
CAPTURE = re.compile(r"^<!-- tui-capture: (\d+)x(\d+)((?: \S+)*) -->\n```\n(.*?)^```", re.M | re.S)
MASKS = [
    (re.compile(r"/tmp/gw-\w{0,8}"), "/tmp/gw-XXXXXXXX"),  # also when cut by the edge
    (re.compile(r"\d{8}T\d{6}\.\d{6}Z"), "<stamp>"),
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "<time>"),  # a moment on another day
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<time>"),
    # with the spaces before it: a right-aligned 0.4s and 0.41s start at different columns
    (re.compile(r" *\b\d+(\.\d+)?s\b"), " <n>s"),
    (re.compile(r"\$\d+\.\d+"), "$<n>"),
    (re.compile(r"\bpid \d+"), "pid <n>"),
    (re.compile(r"\breview-\d+"), "review-<n>"),
]


def captures() -> list[tuple[int, int, list[str], list[str]]]:
    found = []
    for match in CAPTURE.finditer(DOC.read_text(encoding="utf-8")):
        width, height, keys, body = match.groups()
        found.append((int(width), int(height), keys.split(), body.splitlines()))
    return found


def mask(line: str) -> str:
    for pattern, replacement in MASKS:
        line = pattern.sub(replacement, line)
    return line.rstrip()


def same(shown: list[str], screen: list[str], width: int) -> bool:
    def trimmed(lines: list[str]) -> list[str]:
        lines = [line.rstrip() for line in lines]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    shown, screen = trimmed(shown), trimmed(screen)
    if len(shown) != len(screen):
        return False
    for expected, actual in zip(shown, screen, strict=True):
        a, b = mask(expected), mask(actual)
        if a == b:
            continue
        cut = len(expected) >= width - 1 and len(actual) >= width - 1
        if not (cut and (a.startswith(b) or b.startswith(a)) and min(len(a), len(b)) > width // 2):
            return False
    return True


@pytest.fixture
def place() -> Iterator[Path]:
    """A temp dir whose path has the length of the one in the captures."""
    path = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    shutil.copytree(
        ROOT / "examples" / "quickstart",
        path / "quickstart",
        ignore=shutil.ignore_patterns(".ghit-work", "logs"),
    )
    config = path / "quickstart" / "ghit-work.toml"
    text = re.sub(
        r"(?m)^tail_cmd = .*$",
        'tail_cmd = ["ghit-work-replay", "events.jsonl", "--follow"]',
        config.read_text(),
    )
    config.write_text(text)
    yield path
    end_leftovers(path / "quickstart" / ".ghit-work")
    shutil.rmtree(path, ignore_errors=True)


def test_the_tui_md_captures_are_the_real_screens(place: Path) -> None:
    shots = captures()
    assert len(shots) >= 6, "tui.md's captures are marked <!-- tui-capture: … -->"
    tmux = Tmux(place, shots[0][0], shots[0][1])
    try:
        tmux.type(f"{GHIT_WORK} --tui -c quickstart/ghit-work.toml; echo EXITED=$?")
        tmux.keys("Enter")
        for number, (width, height, keys, shown) in enumerate(shots, 1):
            if keys:
                tmux.keys(*keys)
            if (width, height) != tmux_size(tmux):
                tmux.run("resize-window", "-t", "t", "-x", str(width), "-y", str(height))
            wait_for_capture(tmux, shown, width, f"capture {number} ({' '.join(keys)})")
        tmux.keys("q")
        tmux.wait_for("EXITED=0")
    finally:
        tmux.kill()


def wait_for_capture(tmux: Tmux, shown: list[str], width: int, what: str) -> None:
    last: list[str] = []

    def matches() -> bool:
        nonlocal last
        last = tmux.screen().splitlines()
        return same(shown, last, width)

    try:
        poll(matches, 20, what)
    except AssertionError:
        raise AssertionError(
            f"docs/tui.md {what} is not the screen; the screen is:\n" + "\n".join(last)
        ) from None


def tmux_size(tmux: Tmux) -> tuple[int, int]:
    size = tmux.run("display-message", "-p", "-t", "t", "#{window_width} #{window_height}")
    width, height = size.split()
    return int(width), int(height)
