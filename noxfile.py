"""Developer sessions: `nox -s tests lint typecheck` (and `bench`, once it exists)."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Measurements, not tests: the figures table (benchmarks/bench.py, against baselines
    measured in the same run), how runs end (benchmarks/runs.py), what the HTTP side costs
    (benchmarks/watching.py), then the soak run (about a minute). Pass --quick for a smoke
    run: `nox -s bench -- --quick`."""
    session.install("-e", ".[dev]")
    quick = "--quick" in session.posargs
    session.run("python", "benchmarks/bench.py", *session.posargs)
    session.run("python", "benchmarks/runs.py", *session.posargs)
    session.run("python", "benchmarks/watching.py", *session.posargs)
    session.run("python", "benchmarks/soak.py", "15" if quick else "60")


# The CLI versions the init presets were checked against (docs/agents.md). A newer CLI is a
# deliberate bump: change these, run the session, read what changed.
AGENT_CLIS = ("@openai/codex@0.169.0", "@anthropic-ai/claude-code@2.1.197")


@nox.session(name="real-agents")
def real_agents(session: nox.Session) -> None:
    """The init presets with the real Codex and Claude Code CLIs, offline: both installed from
    npm into a scratch prefix (GHIT_WORK_REAL_AGENTS=DIR reuses one), a stub model server on
    127.0.0.1, two batches per agent (the second resumed), usage and cost per run, a 429."""
    session.install("-e", ".[dev]")
    prefix = os.environ.get("GHIT_WORK_REAL_AGENTS") or str(
        Path(session.cache_dir).resolve() / "agents"
    )
    session.run(
        "npm",
        "install",
        "--prefix",
        prefix,
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        *AGENT_CLIS,
        external=True,
    )
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/test_real_agents.py",
        "-s",
        *session.posargs,
        env={"GHIT_WORK_REAL_AGENTS": prefix},
    )
