"""The image, through the real docker CLI: `nox -s container` builds it (on a stand-in base
where Docker Hub cannot be reached) and runs these with GHIT_WORK_IMAGE set; elsewhere they
are skipped."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
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


DOC = ROOT / "docs" / "container.md"
OTHER_UID = 1000  # a host user that is neither root nor the image's 10001


def doc_command(heading: str) -> str:
    """The first sh block under `## heading` in docs/container.md: the tests run what the doc
    says, so that the doc cannot drift from what works."""
    text = DOC.read_text()
    assert f"\n## {heading}\n" in text, f"docs/container.md has no section {heading!r}"
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```sh\n", 1)[1].split("```", 1)[0].replace("\\\n", " ").strip()


def with_image(command: str) -> str:
    """`command` with the image the doc builds (`ghit-work`) replaced by the one under test."""
    replaced, count = re.subn(r"(?<= )ghit-work(?= )", IMAGE, command)
    assert count == 1, f"one image name in {command!r}"
    return replaced


@pytest.fixture
def checkout() -> Iterator[Path]:
    """A directory like the top of a checkout, that OTHER_UID may use (not under tmp_path,
    whose parents are the tests' user's only)."""
    path = Path(tempfile.mkdtemp(prefix="ghit-work-checkout-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_a_user(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` through sh in `cwd`, as a newcomer runs it: where the tests run as root (CI),
    as OTHER_UID in the Docker socket's group, owning `cwd`; elsewhere as the tests' user."""
    argv, env = ["sh", "-c", command], dict(os.environ)
    socket = Path("/var/run/docker.sock")
    if os.geteuid() == 0 and socket.exists() and shutil.which("setpriv"):
        for path in [cwd, *cwd.rglob("*")]:
            os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)
        ids = [f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", f"--groups={socket.stat().st_gid}"]
        argv, env["HOME"] = ["setpriv", *ids, *argv], str(cwd)
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


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


def test_the_docs_quickstart_command_runs_as_written(checkout: Path) -> None:
    shutil.copytree(ROOT / "examples" / "quickstart", checkout / "examples" / "quickstart")
    command = with_image(doc_command("Try it: the quickstart"))
    for _ in range(2):  # as written, again: it starts afresh
        result = as_a_user(command, checkout)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        assert "drain: every batch delivered; exiting" in result.stderr
    quickstart = checkout / "examples" / "quickstart"
    assert (quickstart / ".ghit-work").stat().st_uid == quickstart.stat().st_uid, "yours"
    assert any((quickstart / "logs" / "claude").iterdir())


def test_the_docs_init_command_writes_the_state_volume_as_state_dir(checkout: Path) -> None:
    command = with_image(doc_command("Configure it"))
    result = as_a_user(command, checkout)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    written = tomllib.loads((checkout / "ghit-work-conf" / "ghit-work.toml").read_text())
    assert written["ghit-work"]["state_dir"] == "/var/lib/ghit-work/state"
    assert (checkout / "ghit-work-conf" / "prompt.md.j2").exists()


def test_init_writes_a_config_where_it_runs(conf: Path) -> None:
    docker("run", "--rm", "-v", f"{conf}:/etc/ghit-work", IMAGE, "init")
    assert (conf / "ghit-work.toml").exists() and (conf / "prompt.md.j2").exists()
    written = tomllib.loads((conf / "ghit-work.toml").read_text())
    assert written["ghit-work"]["state_dir"] == "/var/lib/ghit-work/state", "on the volume"
    docker("run", "--rm", IMAGE, "init")  # into the image's own /etc/ghit-work


def test_init_into_a_read_only_root_owned_mount_is_one_line(tmp_path: Path) -> None:
    mounted = tmp_path / "conf"
    mounted.mkdir(mode=0o755)  # root's, where the tests run as root
    result = docker("run", "--rm", "-v", f"{mounted}:/etc/ghit-work:ro", IMAGE, "init", check=False)
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(
        r"ghit-work: error: /etc/ghit-work/ghit-work\.toml: cannot write: "
        r"(Permission denied|Read-only file system) \(as uid 10001\); make the directory "
        r"writable for this user, or choose another path with -c\n",
        result.stderr,
    ), result.stderr
    assert not any(mounted.iterdir())


def test_the_image_ships_neither_pip_nor_setuptools() -> None:
    listing = docker(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        IMAGE,
        "-c",
        "ls /opt/ghit-work/bin /opt/ghit-work/lib/python3*/site-packages",
    ).stdout.split()
    assert "ghitwork" in listing and "ghit-work" in listing
    shipped = re.compile(r"(pip|setuptools|_distutils_hack|pkg_resources|distutils-precedence)\b")
    assert not [name for name in listing if shipped.match(name)]


def test_the_image_holds_none_of_the_hosts_extra_ca_certificates() -> None:
    extra = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if not extra:
        pytest.skip("this host has no extra CA certificates to leak")
    found = docker(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        IMAGE,
        "-c",
        "ls -A /usr/local/share/ca-certificates; cat /etc/ssl/certs/ca-certificates.crt",
    ).stdout
    flat = "".join(found.split())
    for cert in extra:
        assert cert.name not in found, f"{cert} was copied into the image"
        for body in re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END", cert.read_text(), re.S):
            assert "".join(body.split()) not in flat, f"{cert} is trusted in the image"


def test_the_image_is_at_most_25_mb_above_its_base() -> None:
    base = os.environ.get("GHIT_WORK_IMAGE_BASE")
    if not base:
        pytest.skip("GHIT_WORK_IMAGE_BASE unset (nox -s container sets it)")
    size = {
        name: int(docker("image", "inspect", "--format", "{{.Size}}", name).stdout)
        for name in (base, IMAGE)
    }
    assert size[IMAGE] - size[base] <= 25_000_000, f"{(size[IMAGE] - size[base]) / 1e6:.1f} MB"


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
