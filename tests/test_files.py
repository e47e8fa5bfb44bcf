"""system/files.py: a file is replaced whole or not at all, and no temp file is left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ghitwork.system.files import write_atomic


def test_pieces_are_written_whole_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    pieces: list[bytes | memoryview] = [b'{"a":[', memoryview(b"[1,2,3]")[1:-1], b"]}"]
    assert write_atomic(path, pieces) == len(b'{"a":[1,2,3]}')
    assert path.read_bytes() == b'{"a":[1,2,3]}'


def test_a_piece_that_cannot_be_made_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(b"old")

    def pieces() -> Iterator[bytes]:
        yield b'{"half":'
        raise TypeError("not JSON")

    with pytest.raises(TypeError):
        write_atomic(path, pieces(), sync=False)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_an_oserror_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(b"old")

    def pieces() -> Iterator[bytes]:
        yield b"new"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, pieces())
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
