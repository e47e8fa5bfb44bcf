"""Developer sessions: `nox -s tests lint typecheck` (and `bench`, once it exists)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import nox
import nox.command

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".", "ruff", "import-linter")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Measurements against baselines measured in the same run: the figures table
    (benchmarks/bench.py), live streams and conversations at scale (benchmarks/live.py),
    recovery after kill -9 (benchmarks/recovery.py), how runs end (benchmarks/runs.py), what
    the HTTP side costs (benchmarks/watching.py), dispatch with a notification receiver that
    hangs or fails (benchmarks/notify_latency.py), then the soak run. Every script runs, and
    the session fails at the end if any failed: a figure that missed its target (each prints
    MISSED and exits 1), or a check (the baselines' answers, every delivery). Pass --quick for
    a smoke run: `nox -s bench -- --quick`."""
    session.install("-e", ".[dev]")
    quick = "--quick" in session.posargs
    failed = []
    for script, args in (
        ("benchmarks/bench.py", session.posargs),
        ("benchmarks/live.py", session.posargs),
        ("benchmarks/recovery.py", session.posargs),
        ("benchmarks/runs.py", session.posargs),
        ("benchmarks/watching.py", session.posargs),
        ("benchmarks/notify_latency.py", ["--quick"] if quick else []),
        ("benchmarks/soak.py", ["15" if quick else "60"]),
    ):
        try:
            session.run("python", script, *args)
        except nox.command.CommandFailed:
            failed.append(script)
    if failed:
        session.error(f"missed a target or failed a check: {', '.join(failed)}")


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
# What the image is built from (.dockerignore): the source-edit build copies these.
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "ghitwork", "docker")


@nox.session
def container(session: nox.Session) -> None:
    """Build the image and test it through the real docker CLI (tests/test_container.py).
    Where Docker Hub cannot be reached, the base is a stand-in built from Debian's packages
    (docker/make-base.sh: root, debootstrap), and the build stage's base is its -build tag
    (the host's extra CA certificates, which the image never holds). Skips, saying why,
    without a Docker daemon. The build commands are docs/container.md's."""
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True, check=False).returncode
    ):
        session.skip("no Docker daemon (install docker.io and start dockerd; .ci/run does)")
    session.install("-e", ".[dev]")
    base = build_base = os.environ.get("GHIT_WORK_BASE", BASE)
    if (
        not _have_image(base)
        and subprocess.run(
            ["timeout", "120", "docker", "pull", "-q", base], capture_output=True, check=False
        ).returncode
    ):
        session.log(f"{base} cannot be pulled here: building the stand-in {STAND_IN}")
        base, build_base = STAND_IN, f"{STAND_IN}-build"
        if not (_have_image(base) and _have_image(build_base)):
            started = time.monotonic()
            session.run("sh", "docker/make-base.sh", STAND_IN, external=True)
            session.log(f"stand-in base: {time.monotonic() - started:.1f} s")
    # The source edit is made in a copy of the build context, never in the working tree.
    edited = Path(session.create_tmp()).resolve() / "context"
    shutil.rmtree(edited, ignore_errors=True)
    edited.mkdir()
    for name in CONTEXT:
        if Path(name).is_dir():
            shutil.copytree(name, edited / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(name, edited / name)
    with (edited / "ghitwork" / "__init__.py").open("a") as source:
        source.write("# a source edit\n")
    for build, context in (("cold", "."), ("after a source edit", edited), ("as committed", ".")):
        started = time.monotonic()
        session.run(
            "docker",
            "build",
            "-q",
            *(["--no-cache"] if build == "cold" else []),
            "--build-arg",
            f"BASE={base}",
            "--build-arg",
            f"BUILD_BASE={build_base}",
            "-t",
            IMAGE,
            str(context),
            external=True,
            silent=True,
        )
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
        f"image {sizes[IMAGE] / 1e6:.1f} MB, base {base} {sizes[base] / 1e6:.1f} MB: "
        f"{(sizes[IMAGE] - sizes[base]) / 1e6:.1f} MB above its base (target <= 25)"
    )
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/test_container.py",
        "-v",
        *session.posargs,
        env={"GHIT_WORK_IMAGE": IMAGE, "GHIT_WORK_IMAGE_BASE": base},
    )


def _have_image(name: str) -> bool:
    return (
        subprocess.run(
            ["docker", "image", "inspect", name], capture_output=True, check=False
        ).returncode
        == 0
    )
