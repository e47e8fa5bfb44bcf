"""One invocation with real subprocesses: stdin, output, session ids, timeouts, redaction."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import poll
from rxfakes import agent_config

from ghitwork.app import runtime
from ghitwork.config.model import Config
from ghitwork.flow.dispatch import Dispatcher
from ghitwork.model import usage
from ghitwork.model.results import RunResult
from ghitwork.model.usage import Pricing
from ghitwork.run import invocation as runner
from ghitwork.run.archive import Redactor
from ghitwork.run.invocation import Invocation, Why
from ghitwork.run.output import Patterns
from ghitwork.run.spec import RunSpec, agent_environment
from ghitwork.system import process


def invocation(tmp_path: Path, code: str, **kwargs: object) -> Invocation:
    """A run of `python -c code` in `tmp_path`; `kwargs` override Invocation's options."""
    options: dict[str, object] = {
        "agent": "a",
        "argv": [sys.executable, "-c", code],
        "prompt": "hello prompt\n",
        "workdir": tmp_path,
        "env": dict(os.environ),
        "event_ids": [1, 2],
    }
    options.update(kwargs)
    return Invocation(**options)  # type: ignore[arg-type]


def invoke(tmp_path: Path, code: str, **kwargs: object) -> RunResult:
    return asyncio.run(invocation(tmp_path, code, **kwargs).run())


def test_the_prompt_arrives_on_stdin_and_stdin_is_closed(tmp_path: Path) -> None:
    code = "import sys; open('got', 'w').write(sys.stdin.read()); print('bye')"
    result = invoke(tmp_path, code)
    assert result.ok and result.returncode == 0
    assert (tmp_path / "got").read_text() == "hello prompt\n"


def test_the_prompt_is_let_go_once_written_not_held_while_the_run_lasts(tmp_path: Path) -> None:
    """A batch of thousands makes a prompt of megabytes: a long run does not keep it."""
    run = invocation(tmp_path, "import sys, time; sys.stdin.read(); time.sleep(60)")

    async def scenario() -> str:
        task = asyncio.ensure_future(run.run())
        for _ in range(500):  # until its prompt is written (the process is running)
            if run.pid is not None and not run.prompt:
                break
            await asyncio.sleep(0.01)
        left = run.prompt
        run.terminate(Why.STOPPING)
        await task
        return left

    assert asyncio.run(scenario()) == ""


def test_environment_drops_the_ghit_credentials_and_adds_env_and_agent_name() -> None:
    base = {"PATH": "/bin", "GHIT_API_TOKEN": "t0k3n", "GHIT_API_URL": "https://x/api", "A": "1"}
    env = agent_environment(base, {"A": "2", "B": "3"}, "codex")
    assert env == {
        "PATH": "/bin",
        "A": "2",
        "B": "3",
        "GHIT_WORK_AGENT": "codex",
        "GHIT_WORK_CONVERSATION": "",
    }


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


# -- one run is one failure domain (SPEC §11): ghit-work's own exceptions are the run's fault


def contained(tmp_path: Path, code: str, **kwargs: object) -> tuple[RunResult, list[str]]:
    """The run's result, and what reached asyncio's exception handler meanwhile."""
    seen: list[str] = []

    async def main() -> RunResult:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: seen.append(str(context)))
        return await invocation(tmp_path, code, **kwargs).run()

    return asyncio.run(main()), seen


SLEEPER = (
    "import os, time; open('pid', 'w').write(str(os.getpid())); print('hello', flush=True); "
    "time.sleep(10)"
)


def test_a_forward_callback_that_raises_fails_the_run_and_ends_its_agent(tmp_path: Path) -> None:
    def forward(stream: str, line: str) -> None:
        raise RuntimeError("the status bus broke")

    gone: list[int] = []
    result, seen = contained(tmp_path, SLEEPER, forward=forward, on_gone=gone.append)
    assert result.fault == "reading its stdout: RuntimeError: the status bus broke"
    assert result.outcome == "error" and not result.ok
    assert result.describe() == "error: reading its stdout: RuntimeError: the status bus broke"
    assert result.signal == signal.SIGTERM and result.duration < 5, "ended, not waited for"
    assert not _alive(int((tmp_path / "pid").read_text()))
    assert gone == [result.pid], "its group is forgotten once nothing of it is left"
    assert seen == [], "nothing reaches asyncio's exception handler"


def test_accounting_that_raises_is_the_runs_fault_and_in_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def charge(*args: object) -> object:
        raise KeyError("ledger")

    monkeypatch.setattr(usage, "charge", charge)
    code = "print('tokens: 5')"
    patterns = Patterns(usage=(re.compile(r"tokens: (?P<input_tokens>\d+)"),))
    result, seen = contained(
        tmp_path, code, pricing=Pricing(), patterns=patterns, logdir=tmp_path / "logs"
    )
    assert result.fault == "accounting its usage: KeyError: 'ledger'"
    assert result.returncode == 0 and result.outcome == "error" and seen == []
    [record] = (tmp_path / "logs").glob("*.json")
    data = json.loads(record.read_text())
    assert (data["outcome"], data["fault"]) == ("error", result.fault)


def test_a_logdir_gone_unwritable_during_the_run_is_the_runs_fault(tmp_path: Path) -> None:
    # The agent replaces the logdir by a file: its record cannot be written (even as root).
    code = "import os; os.rename('logs', 'moved'); open('logs', 'w').close(); print('hi')"
    result, seen = contained(tmp_path, code, logdir=tmp_path / "logs")
    assert result.returncode == 0 and result.outcome == "error" and seen == []
    assert result.fault is not None and result.fault.startswith("writing its record ")
    assert "NotADirectoryError: Not a directory" in result.fault
    assert (tmp_path / "moved").is_dir()


def test_a_value_the_os_refuses_at_spawn_is_the_runs_fault(tmp_path: Path) -> None:
    result, seen = contained(tmp_path, "print(1)", env={**os.environ, "X": "a\0b"})
    assert result.fault == f"starting {sys.executable}: ValueError: embedded null byte"
    assert result.pid is None and result.outcome == "error" and seen == []


def test_a_group_hook_that_raises_ends_the_agent_and_keeps_the_bookkeeping(
    tmp_path: Path,
) -> None:
    def on_start(pgid: int) -> None:
        raise OSError(28, "No space left on device")

    gone: list[int] = []
    result, seen = contained(tmp_path, SLEEPER, on_start=on_start, on_gone=gone.append)
    assert result.fault == "starting it: OSError: No space left on device"
    assert result.signal == signal.SIGTERM and gone == [result.pid] and seen == []


def test_a_stop_after_the_agents_exit_leaves_its_result_as_it_was(tmp_path: Path) -> None:
    """Issue 21 item 8: the run ended at the exit; the drain that follows is not the run."""

    async def main() -> RunResult:
        invocation = Invocation(
            agent="a",
            argv=["sh", "-c", "sleep 30 & exit 0"],  # the sleep holds stdout: a 2 s drain
            prompt="",
            workdir=tmp_path,
            env=dict(os.environ),
            event_ids=[1],
        )
        run = asyncio.ensure_future(invocation.run())
        while invocation.pid is None or _alive(invocation.pid):
            await asyncio.sleep(0.01)
        invocation.terminate(runner.Why.STOPPING)
        invocation.kill()
        return await run

    result = asyncio.run(main())
    assert result.ok and not result.stopped and result.returncode == 0


def test_a_run_cancelled_during_the_drain_still_ends_what_it_left(tmp_path: Path) -> None:
    gone: list[int] = []

    async def main() -> int:
        invocation = Invocation(
            agent="a",
            argv=["sh", "-c", "sleep 30 & echo $! > bg; exit 0"],  # sleep holds stdout
            prompt="",
            workdir=tmp_path,
            env=dict(os.environ),
            event_ids=[1],
            on_gone=gone.append,
        )
        run = asyncio.ensure_future(invocation.run())
        while not invocation._exited:  # the agent exited: the 2 s drain has begun
            await asyncio.sleep(0.01)
        assert not run.done()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        return int((tmp_path / "bg").read_text())

    leftover = asyncio.run(main())
    poll(lambda: not _alive(leftover), timeout=5, what="the leftover to get SIGTERM")


def test_the_agent_starts_at_start_before_the_runs_task_has_run(tmp_path: Path) -> None:
    """The agent is started where its run is decided (system/process.py): it is running,
    with its prompt, while the loop has not yet given `run()` a turn."""
    run = invocation(tmp_path, "import sys; open('got', 'w').write(sys.stdin.read())")

    async def scenario() -> RunResult:
        run.start()
        assert run.pid is not None  # started synchronously, no await in between
        deadline = asyncio.get_running_loop().time() + 15
        while not (tmp_path / "got").exists() or not (tmp_path / "got").read_text():
            assert asyncio.get_running_loop().time() < deadline, "the agent never ran"
            await asyncio.sleep(0.01)
        return await run.run()

    result = asyncio.run(scenario())
    assert result.ok and (tmp_path / "got").read_text() == "hello prompt\n"


def test_a_prompt_larger_than_the_pipe_arrives_whole(tmp_path: Path) -> None:
    prompt = "".join(f"line {i}\n" for i in range(400_000))  # 4.6 MB: written as it is read
    code = "import sys, time; time.sleep(0.2); open('got', 'w').write(sys.stdin.read())"
    result = invoke(tmp_path, code, prompt=prompt)
    assert result.ok and (tmp_path / "got").read_text() == prompt


def test_an_agent_that_exits_without_reading_a_large_prompt_is_its_own_status(
    tmp_path: Path,
) -> None:
    result, seen = contained(tmp_path, "import sys; sys.exit(3)", prompt="x" * 1_000_000)
    assert result.returncode == 3 and result.fault is None and seen == []


def test_without_pidfd_a_thread_sees_the_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old kernel or a sandbox without pidfd_open: the run still ends with its status."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    code = "import sys; print(sys.stdin.read().strip()); sys.exit(4)"
    lines: list[str] = []
    result = invoke(tmp_path, code, forward=lambda _stream, line: lines.append(line))
    assert result.returncode == 4 and lines == ["hello prompt"]


def test_an_agent_whose_run_never_began_is_ended_not_orphaned(tmp_path: Path) -> None:
    """The run's task was cancelled before its first turn: the agent `start()` started is
    stopped, and once it has exited its group is forgotten and its pipes closed."""
    gone: list[int] = []
    run = invocation(tmp_path, SLEEPER, on_gone=gone.append)

    async def scenario() -> int:
        run.start()
        assert run.pid is not None
        task = asyncio.ensure_future(run.run())
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        run.abandon()
        deadline = asyncio.get_running_loop().time() + 15
        while not gone:
            assert asyncio.get_running_loop().time() < deadline, "the agent was not ended"
            await asyncio.sleep(0.01)
        return run.pid

    pid = asyncio.run(scenario())
    assert gone == [pid] and not _alive(pid)


def test_an_agent_whose_exit_cannot_be_watched_is_killed_and_reaped_not_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors and of threads (EMFILE, then no thread for the fallback): the
    agent already started is killed and waited for, and the run is a fault."""
    started: list[subprocess.Popen[bytes]] = []

    class Recorded(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    result = invoke(tmp_path, "import time; time.sleep(30)")
    assert result.fault == f"starting {sys.executable}: RuntimeError: can't start new thread"
    assert [child.returncode for child in started] == [-signal.SIGKILL]


def test_a_workdir_it_may_not_enter_is_the_runs_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def is_dir(self: Path) -> bool:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "is_dir", is_dir)
    run = invocation(tmp_path, "print(1)")
    run.start()  # never raises: the dispatcher calls it where the run is decided
    result = asyncio.run(run.run())
    assert result.error == f"workdir {tmp_path}: Permission denied" and result.pid is None


def test_the_prompt_is_let_go_once_written_by_the_child_too(tmp_path: Path) -> None:
    """The writer's last slice of the prompt still refers to all of it: it is let go."""
    run = invocation(tmp_path, "import sys, time; sys.stdin.read(); time.sleep(60)")

    async def scenario() -> int:
        run.start()
        child = run._child
        assert child is not None
        deadline = asyncio.get_running_loop().time() + 15
        while child._proc.stdin is not None and not child._proc.stdin.closed:
            assert asyncio.get_running_loop().time() < deadline, "the prompt was never written"
            await asyncio.sleep(0.01)
        held = len(child._input.obj)  # type: ignore[arg-type]
        run.terminate(Why.STOPPING)
        await run.run()
        return held

    assert asyncio.run(scenario()) == 0


def test_a_run_whose_subscription_goes_before_its_task_began_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """The dispatcher starts the agent at `launch`; the run's subscription disposed before
    its task's first turn (the task cancelled): the agent is ended and the run forgotten."""
    agent = agent_config("a")
    dispatcher = Dispatcher(Config(path=tmp_path / "x.toml", agents=(agent,)), lambda _: None, {})
    spec = RunSpec(
        argv=(sys.executable, "-c", "import time; time.sleep(60)"),
        prompt="",
        env=dict(os.environ),
        event_ids=(1,),
        workdir=tmp_path,
    )

    async def scenario() -> int | None:
        run = dispatcher.launch(agent, spec)
        pid = dispatcher.running[("a", "")].pid  # started already, before any await
        run.subscribe().dispose()  # cancels the run's task before its first turn
        deadline = asyncio.get_running_loop().time() + 15
        while dispatcher.running or (pid is not None and _alive(pid)):
            assert asyncio.get_running_loop().time() < deadline, "the agent or its run stayed"
            await asyncio.sleep(0.01)
        return pid

    pid = asyncio.run(scenario())
    assert pid is not None and not _alive(pid)


def test_an_exit_status_reaped_by_the_kernel_is_unknown_not_a_success(tmp_path: Path) -> None:
    """SIGCHLD ignored (inherited from whatever started ghit-work): the kernel reaps the
    agent and no status is left. The run says 255, as asyncio did, never a 0 it did not see;
    and ghit-work sets SIGCHLD back to the default at its start."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        result = invoke(tmp_path, "import sys; sys.exit(3)")
        assert result.returncode == 255 and not result.ok
        runtime.watch_children()  # what the daemon does first (outside a loop here)
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        assert invoke(tmp_path, "import sys; sys.exit(3)").returncode == 3
    finally:
        signal.signal(signal.SIGCHLD, previous)


def test_a_new_agent_gets_the_cpu_first_after_a_while_without_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `Popen` the loop yields the CPU when no agent was started for IDLE_BEFORE_YIELD,
    so that an agent the kernel put on ghit-work's CPU execs before the run's bookkeeping
    (system/process.py); runs started in a burst, or at a busy stream's pace, never yield."""
    yields: list[int] = []
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(1))

    async def scenario() -> list[int]:
        counts, children = [], []

        def start() -> None:
            children.append(process.Child.start(["true"], tmp_path, dict(os.environ)))

        monkeypatch.setattr(process, "_last_spawn", 0.0)  # none for a long while
        for _ in range(3):  # a burst: the first yields
            start()
        counts.append(len(yields))
        monkeypatch.setattr(process, "_last_spawn", time.monotonic() - 1.0)
        start()  # a second without runs: it yields
        start()  # at once after it: it does not
        counts.append(len(yields))
        for child in children:
            child.watch(lambda fd, data: None, b"")
            await child.exited
            child.close()
        return counts

    assert asyncio.run(scenario()) == [1, 2]
