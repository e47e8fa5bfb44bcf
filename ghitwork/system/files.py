"""Files ghit-work writes in state_dir and logdir: owner-only, whatever the umask (SPEC §11).

They hold events, prompts and agent output. A directory ghit-work creates is 0700; one that
exists already (made by an image with the group bits of the group-0 convention, or by the
operator) is left as it is. Every file ghit-work writes there is 0600, set on the open (and by
fchmod, so neither the umask nor an older file's mode decides).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_dir(path: Path) -> None:
    """Create `path` and its missing parents, owner-only. Existing ones are kept as they are."""
    missing: list[Path] = []
    current = path
    while not current.is_dir() and current.parent != current:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            if directory.is_dir():
                continue  # made meanwhile by another process: not ours to change
            raise
        os.chmod(directory, DIR_MODE)  # the umask may have taken bits off (or left too many)


def open_fd(path: Path, flags: int) -> int:
    """`os.open(path, flags | O_CREAT)` for a file that is 0600, new or not."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    with contextlib.suppress(PermissionError):  # not ours (another user's): left as it is
        os.fchmod(fd, FILE_MODE)
    return fd


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of `data` (a short write is continued; an error is raised)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class AtomicFile:
    """`path` written piece by piece (`write`, as often as needed, even across turns of the
    loop), then put in place at once (`commit`), so that a reader sees the old file or the
    new one, never half: a temp file beside it, 0600, fsynced (unless `sync` is false),
    renamed over it. `abort` (or a failure of either) removes the temp file: on a full disk,
    it would hold the space."""

    def __init__(self, path: Path, sync: bool = True) -> None:
        self.path, self.sync, self.written = path, sync, 0
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._fd: int | None = open_fd(self._tmp, os.O_WRONLY | os.O_TRUNC)

    def write(self, piece: bytes | memoryview) -> None:
        assert self._fd is not None, "written after its commit or abort"
        try:
            write_all(self._fd, piece)
        except BaseException:
            self.abort()
            raise
        self.written += len(piece)

    def commit(self) -> int:
        """Put it in place; how many bytes it has."""
        fd, self._fd = self._fd, None
        assert fd is not None, "committed twice, or after its abort"
        try:
            try:
                if self.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            raise
        return self.written

    def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                self._tmp.unlink()


def write_atomic(path: Path, data: bytes | Iterable[bytes | memoryview], sync: bool = True) -> int:
    """Write `data` (or its pieces, in turn: a large file is never held whole) to `path` as
    `AtomicFile` does. Returns how many bytes it wrote. When it fails, the temp file is
    removed and the OSError raised."""
    file = AtomicFile(path, sync)
    try:
        for piece in (data,) if isinstance(data, bytes) else data:
            file.write(piece)
    except BaseException:  # an OSError, or a piece that could not be made: no temp file left
        file.abort()
        raise
    return file.commit()


def move_aside(path: Path, suffix: str) -> str:
    """Rename `path` to `<name>.<suffix>` beside it; says where it went, or why it could not."""
    aside = path.with_name(f"{path.name}.{suffix}")
    try:
        path.rename(aside)
    except OSError as error:
        return f"it could not be moved aside: {error.strerror or error}"
    return f"moved aside as {aside}"
