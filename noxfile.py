"""Developer sessions: `nox -s tests lint typecheck` (and `bench`, once it exists)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
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


BASE = "python:3.12-slim-bookworm"
STAND_IN = "ghit-work-base:bookworm"
IMAGE = "ghit-work:test"


@nox.session
def container(session: nox.Session) -> None:
    """Build the image and test it through the real docker CLI (tests/test_container.py).
    Where Docker Hub cannot be reached, the base is a stand-in built from Debian's packages
    (docker/make-base.sh: root, debootstrap). Skips, saying why, without a Docker daemon."""
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True, check=False).returncode
    ):
        session.skip("no Docker daemon (install docker.io and start dockerd; .ci/run does)")
    session.install("-e", ".[dev]")
    base = os.environ.get("GHIT_WORK_BASE", BASE)
    if (
        not _have_image(base)
        and subprocess.run(
            ["timeout", "120", "docker", "pull", "-q", base], capture_output=True, check=False
        ).returncode
    ):
        session.log(f"{base} cannot be pulled here: building the stand-in {STAND_IN}")
        if not _have_image(STAND_IN):
            session.run("sh", "docker/make-base.sh", STAND_IN, external=True)
        base = STAND_IN
    source = Path("ghitwork/__init__.py")
    original = source.read_text()
    for build in ("cold", "after a source edit", "as committed"):
        started = time.monotonic()
        if build == "after a source edit":  # only the layers from the sources on rebuild
            source.write_text(original + "# a source edit\n")
        try:
            no_cache = ["--no-cache"] if build == "cold" else []
            session.run(
                "docker",
                "build",
                "-q",
                *no_cache,
                "--build-arg",
                f"BASE={base}",
                "-t",
                IMAGE,
                ".",
                external=True,
                silent=True,
            )
        finally:
            source.write_text(original)
        session.log(f"build ({build}): {time.monotonic() - started:.1f} s")
    sizes = {
        name: int(
            subprocess.run(
                ["docker", "image", "inspect", "--format", "{{.Size}}", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for name in (base, IMAGE)
    }
    session.log(
        f"image {sizes[IMAGE] / 1e6:.0f} MB, base {base} {sizes[base] / 1e6:.0f} MB: "
        f"{(sizes[IMAGE] - sizes[base]) / 1e6:.0f} MB above its base (target <= 60)"
    )
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/test_container.py",
        "-v",
        *session.posargs,
        env={"GHIT_WORK_IMAGE": IMAGE},
    )


def _have_image(name: str) -> bool:
    return (
        subprocess.run(
            ["docker", "image", "inspect", name], capture_output=True, check=False
        ).returncode
        == 0
    )
