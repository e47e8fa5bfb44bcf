"""A conversation's workspace (SPEC §12): its workdir made before its first run
(`workspace_setup` run in it, e.g. a `git worktree add`), and removed once it has been idle
for `workspace_keep` (`workspace_teardown` run in it first).

Each command runs in its own process group, with the agent's environment (the ghit token
left out, `GHIT_WORK_CONVERSATION` set), stdin closed; what it prints is kept for the error
line only (its last line, redacted). What goes wrong is returned as one line, never raised:
a failed setup fails that run (it is retried like any; a workdir it was making is taken
down again), a failed teardown keeps the workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ghitwork.model.redact import Redactor
from ghitwork.system.groups import terminate_group

COMMAND_TIMEOUT = 600.0  # seconds a setup or teardown command may take
GroupHook = Callable[[int], None]


async def make(
    workdir: Path,
    setup: Sequence[str],
    env: Mapping[str, str],
    secrets: Sequence[str] = (),
    on_start: GroupHook | None = None,
    on_gone: GroupHook | None = None,
    teardown: Sequence[str] = (),
) -> str | None:
    """Create `workdir` (with its parents) and run `setup` in it (none when empty). What
    went wrong, or None. When the setup fails in a workdir made here, what it left is taken
    down (`teardown` in it, then removed), so that the retry sets it up from scratch; a
    workdir that was there before is left as it is."""
    made = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create the workspace {workdir}: {error.strerror or error}"
    if not setup:
        return None
    failed = await run_command("workspace_setup", setup, workdir, env, secrets, on_start, on_gone)
    if failed is not None and made:
        left = await remove(workdir, teardown, env, secrets, on_start, on_gone)
        if left is not None:
            failed += f"; what it left is kept ({left})"
    return failed


async def remove(
    workdir: Path,
    teardown: Sequence[str],
    env: Mapping[str, str],
    secrets: Sequence[str] = (),
    on_start: GroupHook | None = None,
    on_gone: GroupHook | None = None,
) -> str | None:
    """Run `teardown` in `workdir` (none when empty), then remove what is left of it. What
    went wrong, or None (a workspace already gone is removed)."""
    if teardown and workdir.is_dir():
        problem = await run_command(
            "workspace_teardown", teardown, workdir, env, secrets, on_start, on_gone
        )
        if problem is not None:
            return problem
    try:
        await asyncio.to_thread(_rmtree, workdir)
    except OSError as error:
        return f"cannot remove the workspace {workdir}: {error.strerror or error}"
    return None


def _rmtree(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


async def run_command(
    key: str,
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    secrets: Sequence[str] = (),
    on_start: GroupHook | None = None,
    on_gone: GroupHook | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> str | None:
    """`argv` in `cwd`, in its own process group: None when it exits 0, else one line
    naming `key`, how it ended and its last line of output."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError:
        return f"{key}: command not found: {argv[0]!r}"
    except OSError as error:
        return f"{key}: cannot start {argv[0]!r}: {error.strerror or error}"
    pgid = process.pid
    if on_start is not None:
        on_start(pgid)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError) as error:
        terminate_group(pgid, then=lambda: on_gone(pgid) if on_gone is not None else None)
        with contextlib.suppress(BaseException):
            await asyncio.shield(process.wait())
        if isinstance(error, asyncio.CancelledError):
            raise
        return f"{key}: timed out after {timeout:g}s"
    terminate_group(pgid, then=lambda: on_gone(pgid) if on_gone is not None else None)
    if process.returncode == 0:
        return None
    lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
    last = Redactor(secrets).text(lines[-1].strip()[:300]) if lines else ""
    status = process.returncode
    ended = f"exit {status}" if status is not None and status >= 0 else f"signal {-(status or 0)}"
    return f"{key} failed ({ended})" + (f": {last}" if last else "")
