"""The running daemon: one asyncio loop owns the source, the pipeline, the agents, the state
dir and the signals.

Start: lock and load state_dir, deliver saved events first, then tail from the cursor.
SIGHUP: reload the same config file (a bad one is reported and the old one kept).
SIGTERM/SIGINT: stop reading, terminate running agents (SIGKILL after a grace period), save,
exit 0; a second SIGINT kills the agents at once.
"""

from __future__ import annotations

import asyncio
import enum
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from reactivex.subject import Subject

from ghitwork import deadletters, entry, pipeline, runtime, snapshot
from ghitwork.children import Children, end_left_behind
from ghitwork.config import Config, ConfigError, command_problems, subscription_union
from ghitwork.dashboard import DashboardModel
from ghitwork.dispatch import Dispatcher
from ghitwork.events import Event
from ghitwork.journal import Journal
from ghitwork.routing import Burst, Pair, Slots
from ghitwork.snapshot import Snapshots
from ghitwork.source import Outcome, TailSource, beside_ghit_work, tail_command
from ghitwork.state import (
    ConfigApplied,
    Level,
    StateBus,
    StopRequested,
)
from ghitwork.store import StateDirError, Store

# Redelivery requests are taken within this (SPEC: 2 s); the status snapshot is rewritten at
# most this often.
TICK = min(deadletters.POLL, snapshot.REFRESH)


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    SOURCE_GAVE_UP = 3


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
    ) -> None:
        self.config = config
        self.bus = bus
        self.drain = drain
        self.environ = dict(os.environ if environ is None else environ)
        self.load_config = reload
        self.children = Children(config.state_dir / "children")
        self.dispatcher = Dispatcher(config, bus.publish, self.environ, self.children)
        self.slots = Slots(config.limit)
        self.events: Subject[Burst] = Subject()
        self.injected: Subject[Pair] = Subject()
        self.store = Store(config.state_dir, self._report_store)
        # A compaction waits while a catch-up is read, and once a drain's stream has ended
        # (the snapshot at exit follows).
        self.journal = Journal(
            self.store, self.dispatcher, bus, self._cursor, lambda: self._backlog or self._ending
        )
        self._backlog = False  # the last read from tail-events left more waiting
        self._ending = False  # --drain: tail-events finished; the queued batches go, then exit
        self.source: TailSource | None = None
        self.model = model or DashboardModel()
        if model is None:
            bus.changes.subscribe(self.model)
        self.snapshots = Snapshots(self.model, self._cursor, config.state_dir)
        self._http: Any = None  # web.Server, when `http` is set
        self._stop_requested = asyncio.Event()
        self._interrupts = 0
        self._ticks: asyncio.TimerHandle | None = None

    def _cursor(self) -> int | None:
        return self.source.cursor if self.source else None

    def _report_store(self, level: str, message: str) -> None:
        self.bus.notice(Level(level), "state", message)

    # -- the tail-events command line
    def _argv(self, cursor: int | None) -> list[str]:
        argv = tail_command(self.config.tail_cmd, self.config.agents, cursor)
        argv[0] = beside_ghit_work(argv[0], self.environ.get("PATH", os.defpath))
        return argv

    def _subscription(self) -> tuple[object, ...]:
        scopes, kinds = subscription_union(self.config.agents)
        return (self.config.tail_cmd, tuple(scopes), tuple(kinds))

    # -- lifecycle
    async def run(self) -> Exit:
        runtime.use_pidfd_child_watcher()
        runtime.tune_gc()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        entry.release()  # a stop signal held since the first instant is handled now
        if self.config.http:
            await self._serve_http(self.config.http)  # a port in use: exit 2, nothing touched
        try:
            return await self._run(loop)
        finally:
            if self._http is not None:
                await self._http.close()

    async def _run(self, loop: asyncio.AbstractEventLoop) -> Exit:
        try:
            saved = self.store.open()
        except StateDirError as error:
            self.bus.notice(Level.ERROR, "state", str(error))
            return Exit.FAILURE
        # Single flight across a crash: nothing a previous instance started still runs
        # when this one starts delivering.
        await end_left_behind(
            self.children.path or self.config.state_dir / "children",
            lambda message: self.bus.notice(Level.WARNING, "start", message),
        )
        self.children.open()
        self._warn_missing_commands()
        drained: asyncio.Future[None] = loop.create_future()

        def report_error(error: Exception) -> None:
            # Failures are values; an Rx error here is a bug in ghit-work itself.
            self.bus.notice(Level.ERROR, "pipeline", f"internal error: {error!r}")
            if not drained.done():
                drained.set_exception(error)

        def completed() -> None:
            if not drained.done():
                drained.set_result(None)

        self.bus.publish(ConfigApplied(config=self.config))
        persist = self.bus.changes.subscribe(self.journal)
        flow = pipeline.dispatch(self.events, self.dispatcher, self.slots, self.injected)
        subscription = flow.subscribe(on_error=report_error, on_completed=completed)
        try:
            for pair in self.dispatcher.restore(saved):
                self.injected.on_next(pair)
            self.journal.started(saved.cursor)
            self.store.compact(self.dispatcher.snapshot(saved.cursor))
            self._tick()
            return await self._supervise(drained, saved.cursor)
        finally:
            if self._ticks is not None:
                self._ticks.cancel()
            self.snapshots.write_if_changed()
            self.children.close()
            cursor = self.source.cursor if self.source else saved.cursor
            self.store.compact(self.dispatcher.snapshot(cursor))
            self.store.close()
            subscription.dispose()
            persist.dispose()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

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
            argv=self._argv,
            cwd=self.config.path.parent.resolve(),
            env=self.environ,
            bus=self.bus,
            emit=self._emit,
            drain=self.drain,
            window=lambda: self.config.retry,
            cursor=cursor,
            active=lambda: bool(self.config.enabled_agents),
            backlog=self._behind,
        )
        source_task = asyncio.ensure_future(source.run())
        stop_task = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait([source_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
        if stop_task.done():
            source.stop()
            await source_task
            await self._stop_agents()
            return Exit.OK
        stop_task.cancel()
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
            await self._stop_agents()
        idle.cancel()
        stop_task.cancel()
        return Exit.SOURCE_GAVE_UP

    async def _drain(self, drained: asyncio.Future[None]) -> Exit:
        self._ending = True
        self.bus.notice(
            Level.INFO, "drain", "tail-events finished: delivering every queued batch, then exiting"
        )
        self.events.on_completed()
        self.injected.on_completed()
        stop_task = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait([drained, stop_task], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if not drained.done():
            await self._stop_agents()
            return Exit.OK
        stop_task.cancel()
        if drained.exception() is not None:
            return Exit.FAILURE
        left = {
            n: e
            for n, e in self.dispatcher.pending_events().items()
            if self.dispatcher.agents[n].config.enabled
        }
        if left:
            who = ", ".join(f"{name} ({len(events)} events)" for name, events in left.items())
            agents = "1 agent" if len(left) == 1 else f"{len(left)} agents"
            self.bus.notice(
                Level.ERROR,
                "drain",
                f"{agents} could not be given {'its' if len(left) == 1 else 'their'}"
                f" events: {who}; they stay saved in state_dir",
            )
            return Exit.FAILURE
        message = "every batch delivered; exiting"
        if self.dispatcher.dead_letters:
            count = len(self.dispatcher.dead_letters)
            message += (
                f" ({count} dead letter{'s' if count != 1 else ''} in state_dir: "
                "ghit-work dead-letters lists them)"
            )
        self.bus.notice(Level.INFO, "drain", message)
        return Exit.OK

    async def _stop_agents(self) -> None:
        running = list(self.dispatcher.running)
        if running:
            self.bus.notice(
                Level.INFO,
                "stop",
                f"stopping: terminating {', '.join(running)} (SIGTERM, then SIGKILL)",
            )
        await self.dispatcher.stop()
        waiting = sum(len(e) for e in self.dispatcher.pending_events().values())
        if waiting:
            self.bus.notice(
                Level.INFO,
                "stop",
                f"saved {waiting} undelivered event(s) in {self.config.state_dir}; "
                "they are delivered first at the next start",
            )

    # -- signals
    def request_stop(self, sig: signal.Signals = signal.SIGTERM, reason: str = "") -> None:
        self._interrupts += 1
        if self._interrupts > 1 and sig == signal.SIGINT:
            self.bus.notice(Level.WARNING, "stop", "second interrupt: killing agents now")
            for invocation in self.dispatcher.running.values():
                invocation.kill()
            return
        why = reason or f"{signal.Signals(sig).name} received"
        self.bus.publish(StopRequested(reason=why))
        self._stop_requested.set()

    def request_reload(self) -> None:
        if self.load_config is None or self._stop_requested.is_set():
            return
        try:
            config = self.load_config()
        except ConfigError as error:
            self.bus.notice(
                Level.ERROR, "reload", f"config not reloaded, the old one stays in force: {error}"
            )
            return
        for key in ("state_dir", "http"):  # these take effect at the next start
            kept = getattr(self.config, key)
            if getattr(config, key) != kept:
                self.bus.notice(
                    Level.WARNING, "reload", f"{key} stays {kept or 'off'} until ghit-work restarts"
                )
                config = replace(config, **{key: kept})
        before = self._subscription()
        self.config = config
        self.dispatcher.reload(config)
        self.slots.set_limit(config.limit)
        self._warn_missing_commands()
        self.bus.publish(ConfigApplied(config=config))
        if self.source is not None and self._subscription() != before:
            cursor = self.source.cursor
            self.bus.notice(
                Level.INFO,
                "reload",
                "subscription changed: restarting tail-events"
                + (f" from event {cursor}" if cursor is not None else ""),
            )
            self.source.restart()

    def _tick(self) -> None:
        """Once a second: consume redelivery requests (deadletters.py), and rewrite the status
        snapshot in state_dir if something changed (snapshot.py)."""
        for request in deadletters.pending_requests(self.config.state_dir):
            self.redeliver(request.ids, "ghit-work redeliver")
            deadletters.consumed(request)  # only once the journal has the redelivery
        self.snapshots.write_if_changed()
        loop = asyncio.get_running_loop()
        self._ticks = loop.call_later(TICK, self._tick)

    # -- the HTTP side (web.py)

    async def _serve_http(self, address: str) -> None:
        from ghitwork import web  # aiohttp and prometheus_client only when asked for

        self._http = await web.start(
            address, self.config, self.bus, self.snapshots, self.dispatcher
        )
        self.bus.notice(
            Level.INFO,
            "http",
            f"serving on {self._http.url} (/healthz, /api/v1/state, /metrics, status page /)",
        )

    # -- dead letters handed back by `ghit-work redeliver` or the TUI
    def redeliver(self, ids: tuple[int, ...] | list[int], by: str) -> int:
        """Hand dead letters back to their agents (ids no longer dead letters are skipped);
        returns how many were."""
        pairs = self.dispatcher.redeliver(ids, by)
        for name, events in pairs:
            if not self.injected.is_stopped:
                self.injected.on_next((name, events))  # gives the agent a group if need be
            else:  # the flow is draining: kept queued, saved at the stop
                self.dispatcher.agents[name].queue(events)
        return len(pairs)

    def _warn_missing_commands(self) -> None:
        for problem in command_problems(self.config):
            self.bus.notice(
                Level.WARNING,
                "config",
                f"{problem}; its runs fail until it is installed (checked again at each run)",
            )

    def _behind(self, more: bool) -> None:
        """After each read from tail-events: whether more is already waiting (a catch-up)."""
        self._backlog = more
        self.slots.backlog(more)

    def _emit(self, burst: list[Event]) -> None:
        """One read from tail-events: route it (runs may start; the journal is written before
        any run takes an event), then one write for everything it brought."""
        self.events.on_next(burst)
        self.journal.read_up_to(self.source.cursor if self.source else None)
