"""Who may use a state dir: one ghit-work at a time.

The lock is a flock on the state directory itself, which cannot be deleted from under a
running instance (a lock *file* can: a second instance would then start beside the first).
The `lock` file beside it holds the running instance's pid, for `status` and the commands
that work beside it (`running_pid`), and keeps an older ghit-work, which locks that file,
out too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from ghitwork.system.files import make_dir, open_fd


class StateDirError(Exception):
    """The state dir cannot be used at all (not writable, or locked by another ghit-work)."""


class StateWriteError(StateDirError):
    """A file in the state dir could not be written (a full disk, a read-only mount, its
    permissions). What was on disk before stays valid; what could not be written is kept by
    the Store and written again at the next chance (`Store.unwritten` says how much)."""

    def __init__(self, state_dir: Path, name: str, error: OSError) -> None:
        self.path = state_dir / name
        self.error = error
        super().__init__(f"state_dir {state_dir}: cannot write {name}: {_reason(error)}")


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self._dir_fd: int | None = None
        self._file: IO[str] | None = None

    def take(self) -> None:
        try:
            make_dir(self.dir)
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise StateDirError(
                f"state_dir {self.dir}: cannot use it: {error.strerror or error}"
            ) from None
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(dir_fd)
            raise self._in_use() from None
        self._dir_fd = dir_fd
        try:
            lock = os.fdopen(open_fd(self.dir / "lock", os.O_RDWR), "r+")
        except OSError as error:
            self.release()
            raise StateWriteError(self.dir, "lock", error) from None
        try:
            # An older ghit-work locks this file, not the directory: it is still refused.
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            self.release()
            raise self._in_use() from None
        self._file = lock
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
        except OSError as error:
            self.release()
            raise StateWriteError(self.dir, "lock", error) from None

    def _in_use(self) -> StateDirError:
        try:
            holder = (self.dir / "lock").read_text().split()[0]
        except (OSError, IndexError):
            holder = str(_flock_holder(self.dir) or "unknown")
        return StateDirError(
            f"state_dir {self.dir} is in use by another ghit-work (pid {holder}); "
            "stop it first, or give this one its own state_dir"
        )

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # releases an older ghit-work's kind of lock
            self._file = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)  # releases the flock
            self._dir_fd = None


def running_pid(state_dir: Path) -> int | None:
    """The pid of the ghit-work running on `state_dir`, or None. Read from the pid it writes
    in its lock file (or, that file deleted, from the kernel's table of locks held) and
    checked against the live process, without touching the lock (even a brief flock could
    make a starting instance refuse)."""
    try:
        pid: int | None = int((state_dir / "lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = _flock_holder(state_dir)
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc: a live pid is the best evidence there is
    if stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X"):
        return None  # exited, not reaped yet
    return pid if b"ghit-work" in cmdline or b"ghitwork" in cmdline else None


def _flock_holder(path: Path) -> int | None:
    """The pid holding a flock on `path`, from /proc/locks (Linux), or None."""
    try:
        stat = os.stat(path)
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in table.splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:260072 0 EOF"
        if "FLOCK" in fields and "->" not in fields and inode in fields:
            with contextlib.suppress(ValueError):
                pid = int(fields[fields.index(inode) - 1])
                return pid if pid > 0 else None
    return None


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
