"""Developer sessions: `nox -s tests lint typecheck` (and `bench`, once it exists)."""

from __future__ import annotations

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
    measured in the same run), how runs end (benchmarks/runs.py), then the soak run (about a
    minute). Pass --quick for a smoke
    run: `nox -s bench -- --quick`."""
    session.install("-e", ".[dev]")
    quick = "--quick" in session.posargs
    session.run("python", "benchmarks/bench.py", *session.posargs)
    session.run("python", "benchmarks/runs.py", *session.posargs)
    session.run("python", "benchmarks/soak.py", "15" if quick else "60")
