"""One invocation with real subprocesses: stdin, output, session ids, timeouts, redaction."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from conftest import poll

from ghitwork import runner
from ghitwork.archive import Redactor
from ghitwork.output import Patterns
from ghitwork.results import RunResult
from ghitwork.runner import Invocation, agent_environment


def invoke(tmp_path: Path, code: str, **kwargs: object) -> RunResult:
    options: dict[str, object] = {
        "agent": "a",
        "argv": [sys.executable, "-c", code],
        "prompt": "hello prompt\n",
        "workdir": tmp_path,
        "env": dict(os.environ),
        "event_ids": [1, 2],
    }
    options.update(kwargs)
    return asyncio.run(Invocation(**options).run())  # type: ignore[arg-type]


def test_the_prompt_arrives_on_stdin_and_stdin_is_closed(tmp_path: Path) -> None:
    code = "import sys; open('got', 'w').write(sys.stdin.read()); print('bye')"
    result = invoke(tmp_path, code)
    assert result.ok and result.returncode == 0
    assert (tmp_path / "got").read_text() == "hello prompt\n"


def test_environment_drops_the_ghit_credentials_and_adds_env_and_agent_name() -> None:
    base = {"PATH": "/bin", "GHIT_API_TOKEN": "t0k3n", "GHIT_API_URL": "https://x/api", "A": "1"}
    env = agent_environment(base, {"A": "2", "B": "3"}, "codex")
    assert env == {"PATH": "/bin", "A": "2", "B": "3", "GHIT_WORK_AGENT": "codex"}


def test_a_chatty_agent_that_never_reads_stdin_does_not_block(tmp_path: Path) -> None:
    code = (
        "import sys\nfor i in range(20000):\n"
        "    sys.stdout.write('x' * 200 + '\\n'); sys.stderr.write('y' * 100 + '\\n')"
    )
    result = invoke(tmp_path, code, prompt="p" * 2_000_000, logdir=tmp_path / "logs")
    assert result.ok
    stdout = next(p for p in result.log_files if p.endswith(".stdout"))
    stderr = next(p for p in result.log_files if p.endswith(".stderr"))
    assert Path(stdout).stat().st_size == 20000 * 201
    assert Path(stderr).stat().st_size == 20000 * 101


def test_the_session_id_is_found_in_stdout_or_stderr(tmp_path: Path) -> None:
    pattern = re.compile(r"session id: (\S+)")
    out = invoke(
        tmp_path, "print('noise'); print('session id: abc-123')", patterns=Patterns(pattern)
    )
    assert out.session_id == "abc-123"
    err = invoke(
        tmp_path, "import sys; sys.stderr.write('x session id: e42\\n')", patterns=Patterns(pattern)
    )
    assert err.session_id == "e42"
    named = invoke(
        tmp_path,
        "print('id=7 sid=q9')",
        patterns=Patterns(re.compile(r"id=(\d+) sid=(?P<session_id>\w+)")),
    )
    assert named.session_id == "q9", "the group named session_id wins over group 1"


def test_a_timeout_terminates_the_whole_process_group(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "open('child.pid', 'w').write(str(child.pid))\n"
        "time.sleep(60)"
    )
    result = invoke(tmp_path, code, timeout=1.0)
    assert result.timed_out and not result.ok and result.describe() == "timed out after 1s"
    child = int((tmp_path / "child.pid").read_text())
    poll(lambda: not _alive(child), what="the grandchild to be gone")


def test_an_agent_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    runner.KILL_GRACE, saved = 0.5, runner.KILL_GRACE
    try:
        code = (
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "open('ready', 'w').close()\ntime.sleep(60)"
        )
        result = invoke(tmp_path, code, timeout=1.0)
    finally:
        runner.KILL_GRACE = saved
    assert result.timed_out and result.signal == 9


def test_command_not_found_and_missing_workdir_are_failed_results(tmp_path: Path) -> None:
    missing = invoke(tmp_path, "", argv=["no-such-agent-command"])
    assert missing.error == "command not found: no-such-agent-command" and not missing.ok
    nowhere = invoke(tmp_path, "", workdir=tmp_path / "nope")
    assert nowhere.error == f"workdir {tmp_path / 'nope'} does not exist"


def test_exit_status_and_signal_are_told_apart(tmp_path: Path) -> None:
    assert invoke(tmp_path, "raise SystemExit(3)").describe() == "exit 3"
    killed = invoke(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert (killed.returncode, killed.signal, killed.describe()) == (None, 9, "killed by SIGKILL")


def test_logdir_keeps_prompt_output_and_a_record_without_the_token(tmp_path: Path) -> None:
    token = "s3cr3t-token-value"
    code = f"import sys; print('leak {token}'); sys.stderr.write('err\\n'); print('session id: S1')"
    result = invoke(
        tmp_path,
        code,
        logdir=tmp_path / "logs",
        secrets=[token],
        prompt=f"prompt with {token}\n",
        patterns=Patterns(re.compile(r"session id: (\S+)")),
    )
    files = sorted((tmp_path / "logs").iterdir())
    assert [f.suffix for f in files] == [".json", ".prompt", ".stderr", ".stdout"]
    assert len({f.stem for f in files}) == 1 and files[0].stem.endswith("-a")
    for file in files:
        assert token not in file.read_text()
    assert (
        tmp_path / "logs" / f"{files[0].stem}.stdout"
    ).read_text() == "leak ***\nsession id: S1\n"
    record = json.loads(files[0].read_text())
    assert record["agent"] == "a" and record["event_ids"] == [1, 2]
    assert record["exit_status"] == 0 and record["session_id"] == "S1"
    assert record["command"][0] == sys.executable and record["duration"] >= 0
    assert record["start"].endswith("Z") and record["end"] >= record["start"]
    assert result.log_files == tuple(
        str(tmp_path / "logs" / f"{files[0].stem}.{s}")
        for s in ("prompt", "stdout", "stderr", "json")
    )


def test_the_redactor_catches_a_secret_split_across_chunks() -> None:
    redactor = Redactor(["abcdefgh"])
    out = redactor.feed(b"xx abcd") + redactor.feed(b"efgh yy abc") + redactor.feed(b"defgh")
    assert out + redactor.flush() == b"xx *** yy ***"


def test_forwarded_lines_carry_the_stream_name(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    invoke(
        tmp_path,
        "import sys; print('out'); sys.stderr.write('err\\n')",
        forward=lambda stream, line: lines.append((stream, line)),
    )
    assert sorted(lines) == [("stderr", "err"), ("stdout", "out")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return False
