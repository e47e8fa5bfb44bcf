"""`ghit-work init` where it cannot write, and the state_dir it writes where the environment
names one (the container image does: GHIT_WORK_INIT_STATE_DIR, docs/container.md)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import ghit_work, with_commands

from ghitwork.app import cli, commands
from ghitwork.config.load import load_config


def test_init_where_a_directory_cannot_be_created_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    result = ghit_work(
        "init", "-c", str(tmp_path / "a-file" / "conf" / "ghit-work.toml"), cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Errno" not in result.stderr
    assert result.stderr.startswith(
        f"ghit-work: error: {tmp_path / 'a-file' / 'conf'}: cannot create this directory: "
        "Not a directory (as uid "
    )
    assert "choose another path with -c" in result.stderr


def test_init_into_a_directory_it_may_not_write_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root may write anywhere, so the refusal a mounted root-owned directory gives uid 10001 is
    # injected: the first file is written, the second refused.
    real_open = open

    def refusing_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if Path(file).name == commands.PROMPT_FILE:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(commands, "open", refusing_open, raising=False)
    err = io.StringIO()
    config = tmp_path / "ghit-work.toml"
    code = cli.main(["init", "-c", str(config)], stdout=io.StringIO(), stderr=err)
    assert code == 2
    assert err.getvalue() == (
        f"ghit-work: error: {tmp_path / commands.PROMPT_FILE}: cannot write: Permission denied "
        f"(as uid {os.getuid()}); make the directory writable for this user, or choose another "
        "path with -c\n"
    )
    assert not config.exists(), "all or nothing: the config it wrote first is removed"


def test_init_writes_the_state_dir_named_by_ghit_work_init_state_dir(tmp_path: Path) -> None:
    env = with_commands(tmp_path, "codex", "claude", "ghit-cli")
    env["GHIT_WORK_INIT_STATE_DIR"] = '/var/lib/ghit-work/"state"'
    result = ghit_work(
        "init", "-c", str(tmp_path / "conf" / "ghit-work.toml"), cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    config = load_config(tmp_path / "conf" / "ghit-work.toml")
    assert config.state_dir == Path('/var/lib/ghit-work/"state"')
    check = ghit_work(
        "check", "-c", str(tmp_path / "conf" / "ghit-work.toml"), cwd=tmp_path, env=env
    )
    assert check.returncode == 0, check.stderr
    assert 'state_dir: /var/lib/ghit-work/"state"' in check.stdout


def test_init_without_ghit_work_init_state_dir_keeps_it_beside_the_config(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("GHIT_WORK_INIT_STATE_DIR", None)
    result = ghit_work("init", "-c", str(tmp_path / "ghit-work.toml"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert load_config(tmp_path / "ghit-work.toml").state_dir == tmp_path / ".ghit-work"
