"""Command line: parse, wire, and the one error funnel with exit statuses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from ghitwork import __version__
from ghitwork.app import commands, control, runtime, signals
from ghitwork.app.checks import check_problems, tail_cmd_problem, tail_warning, weak_token
from ghitwork.app.commands import PRESETS, PROG, check, init, status
from ghitwork.app.daemon import Daemon, Exit
from ghitwork.app.reaper import become_init_if_pid1
from ghitwork.app.shutdown import error_line
from ghitwork.bus.changes import Level, StateBus
from ghitwork.config.load import load_config
from ghitwork.config.model import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    parse_http_address,
    secret_values,
)
from ghitwork.model.durations import DurationError, parse_duration
from ghitwork.model.redact import Redactor
from ghitwork.observe.dashboard import DashboardModel
from ghitwork.observe.status import StatusWriter


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


def _pause_duration(text: str) -> float:
    """`pause --for`: more than 0, as over HTTP (a pause of 0 would be over as it began)."""
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 (or left out: paused until resumed)")
    return seconds


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
    if command in ("init", "dead-letters", "redeliver", "status", "pause", "resume"):
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


AFTER_TUI = 10  # attention lines printed once --tui has given the terminal back, after a failure
EXIT_STATUSES = """exit status:
  0  a clean stop (SIGTERM, SIGINT, or --drain done)
  1  anything else (e.g. state_dir cannot be used)
  2  a usage or config error
  3  the tail-events retry window ran out
  4  a stage that cannot be contained failed (routing, the journal, the event reader,
     the state bus): undelivered events were saved; the supervisor restarts ghit-work"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Wake coding agents up for the ghit events they subscribed to.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        ("pause", "pause agents: no run starts, their events keep queueing"),
        ("resume", "resume paused agents, and wake conversations that wait for a human"),
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
    pause = subparsers["pause"]
    pause.add_argument("agents", nargs="*", metavar="AGENT")
    pause.add_argument("--all", action="store_true", help="every agent")
    pause.add_argument(
        "--for", dest="duration", type=_pause_duration, metavar="DURATION", help="resume after it"
    )
    pause.add_argument("--reason", default="", metavar="TEXT", help="shown with the pause")
    resume = subparsers["resume"]
    resume.add_argument(
        "words",
        nargs="*",
        metavar="AGENT [CONVERSATION]",
        help="agents; a conversation (thread:...) after one wakes only that conversation",
    )
    resume.add_argument("--all", action="store_true", help="every agent")
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
    code: int = Exit.OK
    args = argparse.Namespace(command="")
    try:
        args = build_parser().parse_args(argv)
        if args.command is not None:
            signals.release()  # only the daemon keeps them held until its handlers exist
        debug = getattr(args, "log_level", "info") == "debug"
        code = _command(args, out, err)
        if out is not None:  # None: started with stdout closed
            out.flush()  # here, where a closed pipe is handled, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`ghit-work check | head -1`): end quietly, as cat and grep
        # do, with the command's own status; what is left unwritten goes nowhere.
        _quiet(out, err)
        return code if args.command is not None else Exit.FAILURE
    except (UsageError, ConfigError) as error:
        error_line(str(error), _json_lines(argv), err)
        return Exit.USAGE
    except KeyboardInterrupt:
        return Exit.OK
    except SystemExit:  # --help, --version: their text, to a pipe that may be closed
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet(sys.stdout, sys.stderr)
        raise
    except Exception as error:
        if debug:
            traceback.print_exc(file=err)
        error_line(str(error), _json_lines(argv), err)
        return Exit.FAILURE


def _json_lines(argv: Sequence[str] | None) -> bool:
    """--log-format json on the command line (read again: the error may be its parsing)."""
    words = list(sys.argv[1:] if argv is None else argv)
    pairs = itertools.pairwise(words)
    return "--log-format=json" in words or ("--log-format", "json") in pairs


def _command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.command == "init":
        return init(args.config, out, args.preset or list(PRESETS))
    if args.command == "status":
        return status(load_config(args.config).state_dir, args.json, out, err)
    if args.command == "pause":
        config = load_config(args.config)
        return control.pause_command(config, args.agents, args.all, args.duration, args.reason, out)
    if args.command == "resume":
        return control.resume_command(load_config(args.config), args.words, args.all, out)
    if args.command in ("dead-letters", "redeliver"):
        state_dir = load_config(args.config).state_dir
        if args.command == "dead-letters":
            return commands.list_command(state_dir, args.json, out)
        if not args.all and not args.ids:
            raise UsageError("redeliver needs dead letter ids, or --all")
        if args.all and args.ids:
            raise UsageError("redeliver takes dead letter ids or --all, not both")
        return commands.redeliver_command(state_dir, args.ids, args.agent, out, err)
    config = load_config(args.config).with_overrides(
        args.retry, args.limit, getattr(args, "http", None)
    )
    if args.command == "check":
        problems = check_problems(config)
        tail = tail_cmd_problem(config, os.environ)
        if tail is not None:
            print(f"{PROG}: warning: {tail_warning(tail, config)}", file=err)
        weak = weak_token(config)
        if weak is not None:
            print(f"{PROG}: warning: {weak}", file=err)
        for problem in problems:  # every one, in one run
            print(f"{PROG}: error: {problem}", file=err)
        if problems:
            return Exit.USAGE
        check(config, out)
        return Exit.OK
    return run(config, args, err)


def _quiet(*streams: TextIO) -> None:
    """After EPIPE: the streams' file descriptors point at /dev/null, so that the flush at
    exit (which would raise again) writes nothing and says nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in streams:
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


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
    # One redactor for every surface; the dispatcher refreshes it at each reload, before the
    # reload's ConfigApplied is published.
    redactor = Redactor(secret_values(os.environ, config))
    if not args.tui:  # with --tui the status lines go to the log pane, never to stderr
        writer = StatusWriter(err, Level(args.log_level), args.log_format == "json", redactor)
        bus.changes.subscribe(writer)
    raised = runtime.raise_open_files_limit()  # runs, state and HTTP share the descriptors
    if raised is not None:
        bus.notice(raised[0], "start", raised[1])

    def reload() -> Config:
        """The same file again; the command line's --retry, --limit, --http keep winning."""
        return load_config(args.config).with_overrides(args.retry, args.limit, args.http)

    # One model for the TUI, `ghit-work status` and the HTTP side (snapshot.py).
    model = DashboardModel(Level(args.log_level), redactor=redactor)
    bus.changes.subscribe(model)
    daemon = Daemon(
        config,
        bus,
        drain=args.drain,
        reload=reload,
        model=model,
        redactor=redactor,
        json_lines=args.log_format == "json",
    )
    # runtime.run: asyncio.run, with aiohttp's and asyncio's own logging as status lines.
    debug = args.log_level == "debug"
    if not args.tui:
        return int(runtime.run(daemon.run(), bus.notice, debug))
    status = int(runtime.run(_with_dashboard(daemon, model), bus.notice, debug))
    if status != Exit.OK:  # the terminal is given back: say why, as nothing was said meanwhile
        last = list(model.attention)[-AFTER_TUI:]
        if args.log_format == "json":  # one line, a JSON object, like every line (SPEC §11)
            said = "; ".join(last)
            error_line(f"exit status {status}; the last warnings and errors: {said}", True, err)
        else:
            print(f"{PROG}: exit status {status}; the last warnings and errors:", file=err)
            for line in last:
                print(f"  {line}", file=err)
    return status


async def _with_dashboard(daemon: Daemon, model: DashboardModel) -> Exit:
    from ghitwork.tui.ui import Controls, run_dashboard  # asciimatics only when asked for

    controls = Controls(
        quit=lambda: daemon.request_stop(reason="quit from the dashboard"),
        terminate=lambda name: daemon.dispatcher.terminate(name),
        redeliver=lambda name: daemon.redeliver_agent(name, "the dashboard"),
        reload=lambda: os.kill(os.getpid(), signal.SIGHUP),
        pause=lambda name: control.toggle(daemon.dispatcher, name, "the dashboard"),
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
