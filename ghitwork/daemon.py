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
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from reactivex.subject import Subject

from ghitwork import pipeline
from ghitwork.config import Config, ConfigError, subscription_union
from ghitwork.dispatch import Dispatcher
from ghitwork.events import Event
from ghitwork.routing import Burst, Pair, Slots
from ghitwork.source import Outcome, TailSource, tail_command
from ghitwork.state import (
    Change,
    ConfigApplied,
    EventsRouted,
    Level,
    RunFinished,
    RunStarted,
    StateBus,
)
from ghitwork.store import StateDirError, Store

SYNC_DELAY = 0.1  # seconds an fsync of the journal may be deferred


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    SOURCE_GAVE_UP = 3


def beside_ghit_work(command: str, path: str) -> str:
    """`command` itself, or the one installed beside ghit-work when PATH does not have it
    (ghit-work run from a virtualenv that is not activated still finds ghit-work-replay)."""
    if os.sep in command or shutil.which(command, path=path):
        return command
    sibling = Path(sys.executable).parent / command
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else command


class Daemon:
    def __init__(
        self,
        config: Config,
        bus: StateBus,
        *,
        drain: bool = False,
        environ: Mapping[str, str] | None = None,
        reload: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.drain = drain
        self.environ = dict(os.environ if environ is None else environ)
        self.load_config = reload
        self.dispatcher = Dispatcher(config, bus.publish, self.environ)
        self.slots = Slots(config.limit)
        self.events: Subject[Burst] = Subject()
        self.injected: Subject[Pair] = Subject()
        self.store = Store(config.state_dir, self._report_store)
        self.source: TailSource | None = None
        self._stop_requested = asyncio.Event()
        self._interrupts = 0
        self._sessions: dict[str, str | None] = {}
        self._journaled = -1  # highest event id written to the journal
        self._sync_timer: asyncio.TimerHandle | None = None

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
        _use_pidfd_child_watcher()
        try:
            saved = self.store.open()
        except StateDirError as error:
            self.bus.notice(Level.ERROR, "state", str(error))
            return Exit.FAILURE
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
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
        persist = self.bus.changes.subscribe(self._persist)
        flow = pipeline.dispatch(self.events, self.dispatcher, self.slots, self.injected)
        subscription = flow.subscribe(on_error=report_error, on_completed=completed)
        try:
            for pair in self.dispatcher.restore(saved):
                self.injected.on_next(pair)
            self._sessions = {n: a.session_id for n, a in self.dispatcher.agents.items()}
            self._journaled = saved.cursor if saved.cursor is not None else -1
            self.store.compact(self.dispatcher.snapshot(saved.cursor))
            return await self._supervise(drained, saved.cursor)
        finally:
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
        self.bus.notice(Level.INFO, "drain", "every batch delivered; exiting")
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
        self.bus.notice(Level.INFO, "stop", f"{why}: stopping")
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
        if config.state_dir != self.config.state_dir:
            self.bus.notice(
                Level.WARNING,
                "reload",
                f"state_dir stays {self.config.state_dir} until ghit-work restarts",
            )
            config = replace(config, state_dir=self.config.state_dir)
        before = self._subscription()
        self.config = config
        self.dispatcher.reload(config)
        self.slots.set_limit(config.limit)
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

    # -- durability: the journal is a subscriber of the state bus
    def _persist(self, change: Change) -> None:
        if isinstance(change, EventsRouted):
            for event, agents in change.routes:
                if agents:
                    self.store.record_event(event.raw or _dumps(event.data), agents)
                    self._journaled = event.id
        elif isinstance(change, RunStarted):
            self.store.record(
                {"start": change.agent, "ids": list(change.event_ids), "at": round(change.at, 3)}
            )
            self._commit(sync=False)
        elif isinstance(change, RunFinished):
            result = change.result
            if not result.stopped:
                self.store.record({"done": change.agent, "ids": list(result.event_ids)})
            session = self.dispatcher.agents[change.agent].session_id
            if self._sessions.get(change.agent) != session:
                self._sessions[change.agent] = session
                self.store.record({"session": change.agent, "id": session})
            self._commit(sync=False)

    def _emit(self, burst: list[Event]) -> None:
        """One read from tail-events: route it (runs may start; the journal is written before
        any run takes an event), then one write for everything it brought."""
        self.events.on_next(burst)
        cursor = self.source.cursor if self.source else None
        if cursor is not None and cursor > self._journaled:
            self.store.record({"c": cursor})
            self._journaled = cursor
        self._commit(sync=False)

    def _commit(self, sync: bool = True) -> None:
        """Write what the journal buffered, at once (so a crash of ghit-work itself loses
        nothing: the OS has it), and fsync within SYNC_DELAY, so a flood costs a few fsyncs a
        second rather than one per read or per run. Only a power loss inside that window can
        lose the tail of the journal: tail-events then replays it (at-least-once holds), and
        an interrupted batch may come back without `redelivered` set.
        """
        try:
            self.store.flush(sync)
            if not sync and self._sync_timer is None:
                loop = asyncio.get_running_loop()
                self._sync_timer = loop.call_later(SYNC_DELAY, self._sync)
            if self.store.wants_compaction():
                self.store.compact(
                    self.dispatcher.snapshot(self.source.cursor if self.source else None)
                )
        except OSError as error:
            self.bus.notice(
                Level.ERROR,
                "state",
                f"cannot write {self.config.state_dir}: {error.strerror or error}; "
                "events are kept in memory and written at the next chance",
            )

    def _sync(self) -> None:
        self._sync_timer = None
        try:
            self.store.sync()
        except OSError as error:
            self.bus.notice(
                Level.ERROR,
                "state",
                f"cannot sync {self.config.state_dir}: {error.strerror or error}",
            )

    def _report_store(self, level: str, message: str) -> None:
        self.bus.notice(Level(level), "state", message)


def _use_pidfd_child_watcher() -> None:
    """On Python 3.11 asyncio starts a thread per child process to wait for it; a pidfd
    watcher waits in the loop itself (the default from 3.12 on). Agents start often."""
    if sys.version_info >= (3, 12) or not hasattr(asyncio, "PidfdChildWatcher"):
        return
    try:
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)
    except (OSError, RuntimeError, NotImplementedError):  # no pidfd_open: keep the default
        pass


def _dumps(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()
