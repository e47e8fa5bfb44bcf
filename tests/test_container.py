"""The image, through the real docker CLI: `nox -s container` builds it (on a stand-in base
where Docker Hub cannot be reached) and runs these with GHIT_WORK_IMAGE set; elsewhere they
are skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, event, poll, write_events

IMAGE = os.environ.get("GHIT_WORK_IMAGE", "")
pytestmark = pytest.mark.skipif(
    not IMAGE, reason="container tests run with `nox -s container` (GHIT_WORK_IMAGE unset)"
)


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.returncode}\n{result.stderr}")
    return result


@pytest.fixture
def name() -> Iterator[str]:
    container = f"ghit-work-test-{uuid.uuid4().hex[:8]}"
    yield container
    docker("rm", "-f", "-v", container, check=False)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A config dir the image's user (10001) may write to, mounted at /etc/ghit-work."""
    tmp_path.chmod(0o777)
    return tmp_path


AGENT_CONFIG = """\
[ghit-work]
tail_cmd = ["ghit-work-replay", "events.jsonl"{follow}]
state_dir = "/var/lib/ghit-work/state"
agent_prompt = "{{% for e in events %}}{{{{ e.id }}}} {{% endfor %}}"
[agents.a]
cmd = ["sh", "-c", {script}]
username = "a"
event_scopes = ["team:ghit"]
event_kinds = ["reply-created"]
"""


def configure(conf: Path, script: str, follow: bool = True) -> None:
    text = AGENT_CONFIG.format(script=json.dumps(script), follow=', "--follow"' if follow else "")
    (conf / "ghit-work.toml").write_text(text)
    events = conf / "events.jsonl"
    events.touch()
    events.chmod(0o666)


def logs(name: str) -> str:
    result = docker("logs", name, check=False)
    return result.stdout + result.stderr


def exit_code(name: str) -> int:
    return int(docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout)


def test_the_image_runs_as_10001_10001_without_git_or_the_tui() -> None:
    ids = docker("run", "--rm", "--entrypoint", "id", IMAGE).stdout
    assert ids.startswith("uid=10001(ghit-work) gid=10001(ghit-work)")
    assert (
        docker(
            "run", "--rm", "--entrypoint", "sh", IMAGE, "-c", "command -v git", check=False
        ).returncode
        != 0
    )
    tui = docker(
        "run",
        "--rm",
        "-t",
        "--entrypoint",
        "sh",
        IMAGE,
        "-c",
        "cd /tmp && ghit-work init --preset generic >/dev/null && ghit-work --tui",
        check=False,
    )
    assert tui.returncode == 2 and "--tui needs asciimatics" in tui.stdout + tui.stderr
    home = docker("run", "--rm", "--entrypoint", "sh", IMAGE, "-c", "echo $HOME").stdout.strip()
    assert home == "/home/ghit-work", "agents' ~/.codex, ~/.claude stay out of the state volume"


def test_the_quickstart_runs_in_the_container(conf: Path) -> None:
    shutil.copytree(ROOT / "examples" / "quickstart", conf, dirs_exist_ok=True)
    for path in [conf, *conf.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    result = docker("run", "--rm", "-v", f"{conf}:/etc/ghit-work", IMAGE, "--drain")
    assert "drain: every batch delivered; exiting" in result.stderr


def test_init_writes_a_config_where_it_runs(conf: Path) -> None:
    docker("run", "--rm", "-v", f"{conf}:/etc/ghit-work", IMAGE, "init")
    assert (conf / "ghit-work.toml").exists() and (conf / "prompt.md.j2").exists()
    docker("run", "--rm", IMAGE, "init")  # into the image's own /etc/ghit-work


def test_docker_stop_while_an_agent_works_saves_and_redelivers(conf: Path, name: str) -> None:
    configure(conf, "cat > /dev/null; sleep 60")
    write_events(conf / "events.jsonl", [event(1)])
    volume = f"{name}-state"
    docker(
        "run",
        "-d",
        "--name",
        name,
        "-v",
        f"{conf}:/etc/ghit-work",
        "-v",
        f"{volume}:/var/lib/ghit-work",
        IMAGE,
    )
    try:
        poll(lambda: "queued -> working" in logs(name), 30, "the agent to work")
        started = time.monotonic()
        docker("stop", "-t", "20", name)
        assert time.monotonic() - started < 10, "stopped by itself, not by SIGKILL"
        assert exit_code(name) == 0
        assert "saved 1 undelivered event(s)" in logs(name)
        docker("rm", name)
        configure(conf, "cat", follow=False)
        again = docker(
            "run",
            "--rm",
            "-v",
            f"{conf}:/etc/ghit-work",
            "-v",
            f"{volume}:/var/lib/ghit-work",
            IMAGE,
            "--drain",
        )
        assert "batch of 1 event [1]; redelivered" in again.stderr
    finally:
        docker("volume", "rm", "-f", volume, check=False)


def test_a_sigterm_at_a_tenth_of_a_second_is_a_clean_stop(conf: Path, name: str) -> None:
    configure(conf, "cat")
    for attempt in range(3):
        container = f"{name}-{attempt}"
        docker(
            "run",
            "-d",
            "--name",
            container,
            "-v",
            f"{conf}:/etc/ghit-work",
            "--tmpfs",
            "/var/lib/ghit-work:uid=10001",
            IMAGE,
        )
        try:
            time.sleep(0.1)  # the point of the test: a stop before start-up is over
            started = time.monotonic()
            docker("stop", "-t", "10", container)
            took = time.monotonic() - started
            code = exit_code(container)
            assert code == 0 and took < 8, (
                f"attempt {attempt}: exit {code} after {took:.1f}s\n{logs(container)}"
            )
        finally:
            docker("rm", "-f", container, check=False)


def test_orphans_are_reaped_and_the_root_filesystem_can_be_read_only(conf: Path, name: str) -> None:
    # The agent leaves `sleep 3` behind; as PID 1 ghit-work ends it and reaps it.
    configure(conf, "cat > /dev/null; (sleep 3 &) ; echo done")
    write_events(conf / "events.jsonl", [event(1), event(2)])
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--read-only",
        "--cap-drop",
        "ALL",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/var/lib/ghit-work:uid=10001",
        "--health-interval",
        "1s",
        "-v",
        f"{conf}:/etc/ghit-work",
        IMAGE,
    )
    poll(lambda: logs(name).count("working -> idle, exit 0") >= 1, 30, "a run to end")

    def zombies() -> list[str]:
        stats = docker("exec", name, "sh", "-c", "cat /proc/[0-9]*/stat", check=False).stdout
        return [line for line in stats.splitlines() if ") Z " in line]

    poll(
        lambda: (
            not zombies()
            and "sleep"
            not in docker("exec", name, "sh", "-c", "cat /proc/[0-9]*/cmdline", check=False).stdout
        ),
        20,
        "no zombie, no leftover",
    )
    poll(
        lambda: (
            docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
            == "healthy"
        ),
        30,
        "the HEALTHCHECK to pass",
    )
    docker("stop", "-t", "20", name)
    assert exit_code(name) == 0
