"""Command line: parse, wire, and the one error funnel with exit statuses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from ghitwork import __version__, deadletters, entry, snapshot
from ghitwork.config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    command_problems,
    load_config,
    parse_http_address,
    secret_values,
)
from ghitwork.daemon import Daemon, Exit
from ghitwork.dashboard import DashboardModel
from ghitwork.durations import DurationError, format_duration, parse_duration
from ghitwork.reaper import become_init_if_pid1
from ghitwork.source import tail_command
from ghitwork.state import Level, StateBus
from ghitwork.status import StatusWriter
from ghitwork.store import running_pid

PROG = "ghit-work"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {PROG} --help)")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _http(text: str) -> str:
    try:
        parse_http_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer 0 or more")
    return value


def _options(parser: argparse.ArgumentParser, command: str | None) -> None:
    """The options; subcommands take them too (`ghit-work check -c X --limit 2`)."""
    default = argparse.SUPPRESS if command else None
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=default or Path(DEFAULT_CONFIG),
        help=f"config file (default: ./{DEFAULT_CONFIG})",
    )
    if command == "init":
        parser.add_argument(
            "--preset",
            action="append",
            choices=PRESETS,
            metavar="{" + ",".join(PRESETS) + "}",
            help="an agent set up for that CLI (repeatable; default: one of each)",
        )
    if command in ("init", "dead-letters", "redeliver", "status"):
        return
    parser.add_argument(
        "--retry",
        type=_duration,
        metavar="DURATION",
        default=default,
        help="retry window for tail-events restarts (overrides the file)",
    )
    parser.add_argument(
        "--limit",
        type=_limit,
        metavar="N",
        default=default,
        help="most agents working at once, 0 for no cap (overrides the file)",
    )
    if command == "check":
        return
    parser.add_argument(
        "--http",
        type=_http,
        metavar="HOST:PORT",
        default=default,
        help="serve /healthz, /api/v1/state, /metrics and a status page (overrides the file)",
    )
    parser.add_argument("--tui", action="store_true", help="open the terminal dashboard")
    parser.add_argument(
        "--drain",
        action="store_true",
        help="when tail-events exits with status 0, deliver every queued batch "
        "and exit 0 (for recorded events)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="least important status lines shown (default: info)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="status lines as text or one JSON object each (default: text)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Wake coding agents up for the ghit events they subscribed to.",
    )
    _options(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers = {}
    for name, text in (
        ("init", "write a commented example config (and its prompt template)"),
        ("check", "validate the config, print the agents and the tail-events command"),
        ("status", "what the ghit-work running on this config is doing"),
        ("dead-letters", "list the batches that failed every attempt"),
        ("redeliver", "hand dead letters back to their agents"),
    ):
        subparsers[name] = commands.add_parser(name, help=text, description=text)
        _options(subparsers[name], name)
    subparsers["dead-letters"].add_argument(
        "--json", action="store_true", help="one JSON object per line"
    )
    subparsers["status"].add_argument(
        "--json", action="store_true", help="the snapshot, as /api/v1/state serves it"
    )
    redeliver = subparsers["redeliver"]
    redeliver.add_argument("ids", nargs="*", type=_dead_letter_id, metavar="ID")
    redeliver.add_argument("--all", action="store_true", help="every dead letter")
    redeliver.add_argument("--agent", metavar="NAME", help="only this agent's dead letters")
    return parser


def _dead_letter_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a dead letter id (a number)")
    return int(text)


def main(
    argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    debug = False
    try:
        args = build_parser().parse_args(argv)
        if args.command is not None:
            entry.release()  # only the daemon keeps them held until its handlers exist
        debug = getattr(args, "log_level", "info") == "debug"
        if args.command == "init":
            return init(args.config, out, args.preset or list(PRESETS))
        if args.command == "status":
            return status(load_config(args.config).state_dir, args.json, out, err)
        if args.command in ("dead-letters", "redeliver"):
            state_dir = load_config(args.config).state_dir
            if args.command == "dead-letters":
                return deadletters.list_command(state_dir, args.json, out)
            if bool(args.all) == bool(args.ids):
                raise UsageError("redeliver takes dead letter ids or --all (not both)")
            return deadletters.redeliver_command(state_dir, args.ids, args.agent, out, err)
        config = load_config(args.config).with_overrides(
            args.retry, args.limit, getattr(args, "http", None)
        )
        if args.command == "check":
            problems = command_problems(config)
            if problems:
                raise problems[0]
            check(config, out)
            return Exit.OK
        return run(config, args, err)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=err)
        return Exit.USAGE
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=err)
        return Exit.USAGE
    except KeyboardInterrupt:
        return Exit.OK
    except Exception as error:
        if debug:
            traceback.print_exc(file=err)
        print(f"{PROG}: error: {error}", file=err)
        return Exit.FAILURE


PRESETS = ("codex", "claude", "generic")
PROMPT_FILE = "prompt.md.j2"


def init(path: Path, out: TextIO, presets: Sequence[str] = PRESETS) -> int:
    """Write the example config at `path` (the [ghit-work] table, then one agent per preset)
    and its prompt template beside it; never overwrite."""
    from importlib import resources  # here: the daemon's start-up does not need it

    templates = resources.files("ghitwork") / "templates"
    config = templates.joinpath("ghit-work.toml").read_text(encoding="utf-8")
    for preset in dict.fromkeys(presets):
        config += templates.joinpath(f"preset-{preset}.toml").read_text(encoding="utf-8")
    targets = {
        path: config,
        path.parent / PROMPT_FILE: templates.joinpath(PROMPT_FILE).read_text(encoding="utf-8"),
    }
    existing = [str(target) for target in targets if os.path.lexists(target)]
    if existing:
        raise ConfigError(
            existing[0],
            None,
            "already exists; ghit-work init never overwrites a file (choose "
            "another path with -c, or move it away)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for target, text in targets.items():
        with open(target, "x", encoding="utf-8") as handle:
            handle.write(text)
        written.append(str(target))
    print(f"wrote {' and '.join(written)}", file=out)
    print(f"next: edit the agents, then `{PROG} check -c {path}`", file=out)
    return Exit.OK


def check(config: Config, out: TextIO) -> None:
    """Print what `ghit-work -c PATH` would run."""
    limit = "no cap" if config.limit == 0 else str(config.limit)
    print(f"config: {config.path}", file=out)
    print(
        f"limit: {limit}   retry: {format_duration(config.retry)}   state_dir: {config.state_dir}",
        file=out,
    )
    print(f"agents: {len(config.agents)} ({len(config.enabled_agents)} enabled)", file=out)
    for agent in config.agents:
        state = "enabled" if agent.enabled else "disabled"
        print(f"  {agent.name} ({state}, user {agent.username})", file=out)
        print(f"    cmd:      {shlex.join(agent.cmd)}", file=out)
        if agent.resume_cmd:
            print(f"    resume:   {shlex.join(agent.resume_cmd)}", file=out)
        print(f"    workdir:  {agent.workdir}", file=out)
        print(f"    scopes:   {', '.join(agent.event_scopes)}", file=out)
        print(f"    kinds:    {', '.join(agent.event_kinds)}", file=out)
        print(f"    budget:   {agent.budget or 'none'}", file=out)
        backoff = format_duration(agent.run_backoff)
        print(f"    attempts: {agent.run_attempts} (backoff {backoff}, doubling)", file=out)
        print(
            f"    timeout:  {format_duration(agent.timeout) if agent.timeout else 'none'}", file=out
        )
        print(f"    logdir:   {agent.logdir or 'none'}", file=out)
        if agent.usage_patterns:
            price = (
                "none"
                if agent.price is None
                else (f"${agent.price.input:g} in, ${agent.price.output:g} out per Mtok")
            )
            print(
                f"    usage:    {len(agent.usage_patterns)} pattern(s), {agent.usage_totals} "
                f"totals, price {price}",
                file=out,
            )
        for name, spend in (("cost", agent.cost_budget), ("tokens", agent.token_budget)):
            if spend is not None:
                print(f"    {name + ':':<9} {spend}", file=out)
        print(f"    prompt:   {agent.prompt.origin}", file=out)
    if config.enabled_agents:
        argv = tail_command(config.tail_cmd, config.agents, None)
        print(f"tail-events: {shlex.join(argv)}", file=out)
    else:
        print("tail-events: not started (no enabled agent)", file=out)


def status(state_dir: Path, as_json: bool, out: TextIO, err: TextIO) -> int:
    """`ghit-work status`: the snapshot the running instance keeps in state_dir."""
    deadline = time.monotonic() + 3.0
    while True:
        pid = running_pid(state_dir)
        if pid is None:
            print(f"{PROG}: no ghit-work is running on state_dir {state_dir}", file=err)
            return Exit.FAILURE
        current = snapshot.read(state_dir)
        if current is not None and current.get("pid") in (pid, 1):
            break
        if time.monotonic() > deadline:  # just started: its first snapshot is not out yet
            print(f"{PROG}: ghit-work (pid {pid}) has written no status yet", file=err)
            return Exit.FAILURE
        time.sleep(0.05)
    if as_json:
        print(json.dumps(current, ensure_ascii=False), file=out)
    else:
        snapshot.render(current, out)
    return Exit.OK


def run(config: Config, args: argparse.Namespace, err: TextIO) -> int:
    if args.tui and importlib.util.find_spec("asciimatics") is None:
        raise UsageError(
            "--tui needs asciimatics, which this install leaves out (the container image is "
            "headless); `pip install asciimatics`, or watch it with `ghit-work status` or http"
        )
    if args.tui and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("--tui needs a terminal (stdin and stdout are not one)")
    reaped = become_init_if_pid1()
    if reaped is not None:
        return reaped
    bus = StateBus()
    secrets = secret_values(os.environ, config)
    if not args.tui or not err.isatty():
        # With --tui the status lines go to the log pane; they still go to stderr when it
        # is redirected (`ghit-work --tui 2>>ghit-work.log`), never onto the screen.
        writer = StatusWriter(err, Level(args.log_level), args.log_format == "json", secrets)
        bus.changes.subscribe(writer)

    def reload() -> Config:
        """The same file again; the command line's --retry, --limit, --http keep winning."""
        return load_config(args.config).with_overrides(args.retry, args.limit, args.http)

    # One model for the TUI, `ghit-work status` and the HTTP side (snapshot.py).
    model = DashboardModel(Level(args.log_level), secrets=secrets)
    bus.changes.subscribe(model)
    daemon = Daemon(config, bus, drain=args.drain, reload=reload, model=model)
    if not args.tui:
        return int(asyncio.run(daemon.run()))
    return int(asyncio.run(_with_dashboard(daemon, model)))


async def _with_dashboard(daemon: Daemon, model: DashboardModel) -> Exit:
    from ghitwork.ui import Controls, run_dashboard  # asciimatics only when asked for

    controls = Controls(
        quit=lambda: daemon.request_stop(reason="quit from the dashboard"),
        terminate=lambda name: daemon.dispatcher.terminate(name),
        redeliver=lambda name: daemon.redeliver(
            [i for i, d in daemon.dispatcher.dead_letters.items() if d.agent == name],
            "the dashboard",
        ),
        reload=lambda: os.kill(os.getpid(), signal.SIGHUP),
    )
    screen = asyncio.ensure_future(run_dashboard(model, controls))

    def dashboard_ended(task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # The terminal is restored by now; stop rather than run on without a screen.
            daemon.request_stop(reason=f"the dashboard failed ({task.exception()!r})")

    screen.add_done_callback(dashboard_ended)
    try:
        return await daemon.run()
    finally:
        screen.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await screen
