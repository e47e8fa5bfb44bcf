"""The running daemon: one asyncio loop owns the source, the pipeline, the agents, the state
dir and the signals.

Start: lock and load state_dir, deliver saved events first, then tail from the cursor.
SIGHUP: reload the same config file (a bad one is reported and the old one kept).
SIGTERM/SIGINT: stop reading, end running agents (SIGKILL after a grace), save, exit 0; a
second SIGINT kills the agents at once.

Failure containment (SPEC §11, docs/containment.md): one run's fault is that run's result;
what cannot be contained (routing, the journal, the event reader, the state bus) is fatal:
one ERROR line naming the stage, /healthz 503 at once, the stop SIGTERM does, exit 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from ghitwork.app import checks, control, runtime, shutdown, signals
from ghitwork.app.intake import Intake
from ghitwork.app.shutdown import Exit as Exit
from ghitwork.bus.changes import (
    ConfigApplied,
    Level,
    StateBus,
    StopRequested,
)
from ghitwork.config.model import Config, ConfigError
from ghitwork.flow import pipeline
from ghitwork.flow.dispatch import Dispatcher
from ghitwork.flow.routing import Slots
from ghitwork.model.redact import Redactor
from ghitwork.notify.notifier import Notifier
from ghitwork.observe import snapshot
from ghitwork.observe.dashboard import DashboardModel
from ghitwork.observe.snapshot import Snapshots
from ghitwork.persist import requests
from ghitwork.persist.journal import Journal
from ghitwork.persist.saved import Saved
from ghitwork.persist.store import StateDirError, Store
from ghitwork.source.tail import Outcome, TailSource, subscription, tail_argv
from ghitwork.system.children import Children, end_left_behind
from ghitwork.system.memory import Quiet

# Redelivery requests are taken within this (SPEC: 2 s); the status snapshot is rewritten at
# most this often.
TICK = min(requests.POLL, snapshot.REFRESH)


class Daemon:
    def __init__(
        self,
        config: Config,
        bus: StateBus,
        *,
        drain: bool = False,
        environ: Mapping[str, str] | None = None,
        reload: Callable[[], Config] | None = None,
        model: DashboardModel | None = None,
        redactor: Redactor | None = None,
        json_lines: bool = False,
    ) -> None:
        self.config = config
        self.bus = bus
        self.drain = drain
        self.environ = dict(os.environ if environ is None else environ)
        self.load_config = reload
        self.children = Children(config.state_dir / "children")
        self.dispatcher = Dispatcher(config, bus.publish, self.environ, self.children, redactor)
        self.notifier = Notifier(config, bus, self.dispatcher.redactor)  # SPEC §13
        self.slots = Slots(config.limit, cap=self.dispatcher.concurrency)
        self.store = Store(config.state_dir, self._report_store)
        # A compaction waits while a catch-up is read, and once a drain's stream has ended
        # (the snapshot at exit follows).
        self.journal = Journal(
            self.store,
            bus,
            lambda: self.dispatcher.snapshot(self.intake.routed),
            self.dispatcher.queued,
            lambda: self.intake.backlog or self._ending,
        )
        self._ending = False  # --drain: tail-events finished; the queued batches go, then exit
        self.source: TailSource | None = None
        self.model = model or DashboardModel()
        if model is None:
            bus.changes.subscribe(self.model)
        self.snapshots = Snapshots(
            self.model, lambda: self.intake.routed, config.state_dir, report=self._report_store
        )
        self._http: Any = None  # web.Server, when `http` is set
        self._stop_requested = asyncio.Event()
        self._interrupts = 0
        self._ticks: asyncio.TimerHandle | None = None
        self._quiet = Quiet(lambda: self.model.version)  # memory given back once quiet
        # What tail-events reads goes into the pipeline, then the journal; only then does the
        # cursor saved and shown move (SPEC §11).
        self.intake = Intake(self.journal, self.slots, self.fatal, lambda: self.failed is not None)
        self.failed: str | None = None  # the stage that could not be contained, once fatal
        self._unsaved = False  # the stop could not write everything to state_dir
        self._watchdog = shutdown.Watchdog(
            self.children,
            config.state_dir,
            lambda: Exit.FATAL if self.failed is not None else Exit.FAILURE,
            json_lines,
        )
        self.json_lines = json_lines  # --log-format json
        bus.fail = lambda error: self.fatal("state bus", error)

    def _report_store(self, level: str, message: str) -> None:
        self.bus.notice(Level(level), "state", message)

    # -- lifecycle
    async def run(self) -> Exit:
        runtime.watch_children()
        runtime.tune_gc()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        signals.release()  # a stop signal held since the first instant is handled now
        if self.config.http:
            await self._serve_http(self.config.http)  # a port in use: exit 2, nothing touched
        try:
            code = await self._run(loop)
        except Exception as error:
            # Nothing may escape as a traceback and a half-done stop: said in one line.
            self.fatal("daemon", error)
            code = Exit.FAILURE
        finally:
            if self._http is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._http.close(), shutdown.STOP_SLACK)
            self._watchdog.cancel()
        if self.failed is not None:
            return Exit.FATAL
        return Exit.FAILURE if self._unsaved and code is Exit.OK else code

    # -- what cannot be contained
    def fatal(self, stage: str, error: BaseException) -> None:
        """`stage` failed in a way no run owns: say it once, answer 503 from now on, and
        stop as SIGTERM does (agents terminated, undelivered events saved), then exit 4 for
        the supervisor to start a fresh ghit-work. Never runs on half-alive."""
        if self.failed is not None:
            return
        self.failed = stage
        self.model.health = "stopping"  # /healthz answers 503 from this instant
        shutdown.say_fatal(self.bus, stage, error, self.json_lines)
        self.request_stop(reason=f"fatal: {stage} failed")

    async def _run(self, loop: asyncio.AbstractEventLoop) -> Exit:
        try:
            saved = self.store.open()
        except StateDirError as error:
            self.bus.notice(Level.ERROR, "state", str(error))
            return Exit.FAILURE
        try:
            return await self._started(loop, saved)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.store.close()

    async def _started(self, loop: asyncio.AbstractEventLoop, saved: Saved) -> Exit:
        # Single flight across a crash: what a previous instance started is ended first.
        await end_left_behind(
            self.children.path or self.config.state_dir / "children",
            lambda message: self.bus.notice(Level.WARNING, "start", message),
        )
        checks.warn_at_start(self.config, self.environ, self.bus)
        self.children.open()
        drained: asyncio.Future[None] = loop.create_future()

        def report_error(error: Exception) -> None:
            # Failures are values; an Rx error here is a bug in ghit-work itself: fatal.
            self.fatal("pipeline", error)
            if not drained.done():
                drained.set_result(None)  # a drain waiting for it ends: `failed` says why

        def completed() -> None:
            if not drained.done():
                drained.set_result(None)

        self.bus.publish(ConfigApplied(config=self.config))
        self.intake.routed = saved.cursor
        try:
            # The new generation is written before anything runs (a full disk stops the
            # start here, nothing started), and before the dispatcher takes what was loaded:
            # a restart's peak memory is then the larger of the two, not their sum.
            self.store.compact(saved)
        except (OSError, StateDirError) as error:
            self.bus.notice(
                Level.ERROR,
                "state",
                f"{shutdown.cannot_write(self.config.state_dir, error)}; nothing was started "
                "and nothing is lost (the saved events and cursor stay as they were): free "
                "space or fix its permissions, then start ghit-work again",
            )
            self.children.close()
            return Exit.FAILURE
        waiting = requests.pending_requests(self.config.state_dir)  # taken at the first tick
        restored = self.dispatcher.restore(saved, {i for r in waiting for i in r.ids})
        self.journal.started(saved)
        cursor = saved.cursor
        saved.release()  # its events live on in `restored`, and on disk in the new generation
        persist = self.bus.changes.subscribe(
            shutdown.guarded("journal", self.journal, self.fatal, lambda: self.failed)
        )
        flow = pipeline.dispatch(
            self.intake.events, self.dispatcher, self.slots, self.intake.injected
        )
        subscription = flow.subscribe(on_error=report_error, on_completed=completed)
        try:
            self.notifier.start()  # before the pauses asked for while stopped apply
            # Pauses asked for while no instance ran apply before any saved event runs.
            control.take_controls(self.config.state_dir, self.dispatcher, self.bus)
            await self.intake.restore(restored)
            del restored  # queued now: each event lives as long as its conversation needs it
            loop.call_soon(self._tick)  # after them: status.json can wait for the first runs
            return await self._supervise(drained, cursor)
        finally:
            if self._ticks is not None:
                self._ticks.cancel()
            await self.notifier.close()  # sends under way get a second; the rest waits
            with contextlib.suppress(Exception):  # reported by snapshot.py itself
                self.snapshots.write_if_changed(now=True)
            if not shutdown.save(
                self.store,
                self.dispatcher.snapshot(self.intake.routed),
                self.dispatcher.waiting(),
                self.bus,
            ):
                self._unsaved = True
            # Nothing this instance started outlives it: leftovers get SIGTERM, SIGKILL after
            # the grace (within shutdown.STOP_SLACK); what left its group is named (children.py).
            await self.children.end_all(
                lambda message: self.bus.notice(Level.WARNING, "stop", message),
                grace=shutdown.STOP_SLACK - 2.0,
            )
            self.children.close()
            subscription.dispose()
            persist.dispose()

    async def _supervise(self, drained: asyncio.Future[None], cursor: int | None) -> Exit:
        if not self.config.enabled_agents:
            self.bus.notice(
                Level.WARNING,
                "tail-events",
                "not started: no enabled agent subscribes to anything "
                "(enable one and reload with SIGHUP)",
            )
            if self.drain:
                return Exit.OK
        source = self.source = TailSource(
            argv=lambda cursor: tail_argv(
                self.config, self.environ.get("PATH", os.defpath), cursor
            ),
            cwd=self.config.path.parent.resolve(),
            env=self.environ,
            bus=self.bus,
            emit=lambda burst: self.intake.emit(burst, source.cursor),
            drain=self.drain,
            window=lambda: self.config.retry,
            cursor=cursor,
            active=lambda: bool(self.config.enabled_agents),
            backlog=self.intake.behind,
            children=self.children,
            fail=lambda error: self.fatal("event reader", error),
        )
        source_task = asyncio.ensure_future(source.run())
        # While tail-events starts: the templates not compiled at load (the built-in one).
        report = functools.partial(self.bus.notice, Level.ERROR, "config")
        asyncio.get_running_loop().call_soon(self.config.compile_templates, report)
        stop_task = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait([source_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
        if stop_task.done():
            source.stop()
            try:
                await asyncio.wait_for(asyncio.shield(source_task), shutdown.STOP_BOUND)
            except Exception as error:  # ended badly, or not in time: the stop goes on
                if not isinstance(error, TimeoutError):
                    self.fatal("event reader", error)
            await shutdown.stop_agents(self.dispatcher, self.bus, self.failed is not None)
            return Exit.OK
        stop_task.cancel()
        if source_task.exception() is not None:
            self.fatal("event reader", source_task.exception() or Exception())
            await shutdown.stop_agents(self.dispatcher, self.bus, self.failed is not None)
            return Exit.FATAL
        outcome = source_task.result()
        if outcome is Outcome.DRAINED:
            return await self._drain(drained)
        # GAVE_UP: the external supervisor takes over; running agents finish (their timeouts
        # bound them), nothing new starts.
        self.bus.notice(
            Level.ERROR,
            "tail-events",
            f"gave up: the stream was not healthy again within the {self.config.retry:g}s "
            "retry window; exiting with status 3 for the supervisor to restart ghit-work",
        )
        self.dispatcher.refuse_new_runs()
        idle = asyncio.ensure_future(self.dispatcher.wait_idle())
        stop_task = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait([idle, stop_task], return_when=asyncio.FIRST_COMPLETED)
        if not idle.done():
            await shutdown.stop_agents(self.dispatcher, self.bus, self.failed is not None)
        idle.cancel()
        stop_task.cancel()
        return Exit.SOURCE_GAVE_UP

    async def _drain(self, drained: asyncio.Future[None]) -> Exit:
        self._ending = True
        self.bus.notice(
            Level.INFO, "drain", "tail-events finished: delivering every queued batch, then exiting"
        )
        self.intake.events.on_completed()
        self.intake.injected.on_completed()
        stop_task = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait([drained, stop_task], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if not drained.done():
            await shutdown.stop_agents(self.dispatcher, self.bus, self.failed is not None)
            return Exit.OK
        stop_task.cancel()
        if self.failed is not None:
            await shutdown.stop_agents(self.dispatcher, self.bus, self.failed is not None)
            return Exit.FATAL
        return shutdown.drained(self.dispatcher, self.bus)

    # -- signals
    def request_stop(self, sig: signal.Signals = signal.SIGTERM, reason: str = "") -> None:
        self._interrupts += 1
        if self._interrupts > 1 and sig == signal.SIGINT:
            self.bus.notice(Level.WARNING, "stop", "second interrupt: killing agents now")
            for invocation in self.dispatcher.running.values():
                invocation.kill()
            return
        why = reason or f"{signal.Signals(sig).name} received"
        self._watchdog.start()
        self._stop_requested.set()
        self.bus.publish(StopRequested(reason=why))

    def request_reload(self) -> None:
        if self.load_config is None or self._stop_requested.is_set():
            return
        try:
            config = checks.reloadable(self.config, self.load_config(), self.environ)
        except ConfigError as error:
            self.bus.notice(
                Level.ERROR, "reload", f"config not reloaded, the old one stays in force: {error}"
            )
            return
        config = checks.kept_until_restart(self.config, config, self.bus)
        before = subscription(self.config)
        self.config = config
        self.dispatcher.reload(config)
        self.slots.set_limit(config.limit)  # and the agents' `concurrency`
        checks.warn_missing_commands(self.config, self.bus)
        self.bus.publish(ConfigApplied(config=config))
        if self.source is not None and subscription(self.config) != before:
            cursor = self.source.cursor
            self.bus.notice(
                Level.INFO,
                "reload",
                "subscription changed: restarting tail-events"
                + (f" from event {cursor}" if cursor is not None else ""),
            )
            self.source.restart()

    def _tick(self) -> None:
        """Once a second: take the requests left in state_dir, rewrite status.json."""
        names = requests.listing(self.config.state_dir)  # one look, for both kinds
        if names:
            control.take_controls(self.config.state_dir, self.dispatcher, self.bus, names)
            self.intake.take_requests(self.config.state_dir, self.dispatcher, self.bus, names)
        self.model.sweep()
        self.snapshots.write_if_changed()
        self._quiet.tick(functools.partial(runtime.give_back_memory, self.bus.notice))
        self._ticks = asyncio.get_running_loop().call_later(TICK, self._tick)

    async def _serve_http(self, address: str) -> None:
        from ghitwork.http import web  # aiohttp and prometheus_client only when asked for

        controls = control.Controls(self.dispatcher, self.redeliver_agent)  # with a token
        self._http = await web.start(address, self.config, self.bus, self.snapshots, controls)
        urls = "/healthz, /api/v1/state, /metrics, status page /"
        self.bus.notice(Level.INFO, "http", f"serving on {self._http.url} ({urls})")

    # -- dead letters handed back by `ghit-work redeliver` or the TUI
    def redeliver_agent(self, name: str, by: str) -> int:
        """Every dead letter of agent `name` handed back (the TUI's `R`, the HTTP route)."""
        letters = self.dispatcher.dead_letters.items()
        ids = [i for i, letter in letters if letter.agent == name]
        return self.intake.redeliver(self.dispatcher, ids, by)
