"""The running daemon: one asyncio loop owns the source, the pipeline, the agents and signals."""

from __future__ import annotations

import asyncio
import enum
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from reactivex.subject import Subject

from ghitwork import pipeline
from ghitwork.config import Config
from ghitwork.dispatch import Dispatcher
from ghitwork.events import Event
from ghitwork.routing import Slots
from ghitwork.source import Outcome, TailSource, tail_command
from ghitwork.state import Level, StateBus


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
    ) -> None:
        self.config = config
        self.bus = bus
        self.drain = drain
        self.environ = dict(os.environ if environ is None else environ)
        self.dispatcher = Dispatcher(config, bus.publish, self.environ)
        self.slots = Slots(config.limit)
        self.events: Subject[Event] = Subject()
        self._stop_requested: asyncio.Event | None = None
        self._signals = 0

    def _argv(self, cursor: int | None) -> list[str]:
        argv = tail_command(self.config.tail_cmd, self.config.agents, cursor)
        argv[0] = beside_ghit_work(argv[0], self.environ.get("PATH", os.defpath))
        return argv

    async def run(self) -> Exit:
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        drained: asyncio.Future[None] = loop.create_future()

        def report_error(error: Exception) -> None:
            # Failures are values; an Rx error here is a bug in ghit-work itself.
            self.bus.notice(Level.ERROR, "pipeline", f"internal error: {error!r}")
            if not drained.done():
                drained.set_exception(error)

        def completed() -> None:
            if not drained.done():
                drained.set_result(None)

        subscription = pipeline.dispatch(self.events, self.dispatcher, self.slots).subscribe(
            on_error=report_error, on_completed=completed
        )
        try:
            return await self._supervise(drained)
        finally:
            subscription.dispose()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _supervise(self, drained: asyncio.Future[None]) -> Exit:
        assert self._stop_requested is not None
        if not self.config.enabled_agents:
            self.bus.notice(
                Level.WARNING, "tail-events", "not started: no enabled agent subscribes to anything"
            )
            if self.drain:
                return Exit.OK
            await self._stop_requested.wait()
            return Exit.OK
        source = TailSource(
            argv=self._argv,
            cwd=self.config.path.parent.resolve(),
            env=self.environ,
            bus=self.bus,
            emit=self.events.on_next,
            drain=self.drain,
            window=lambda: self.config.retry,
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
            self.bus.notice(
                Level.INFO,
                "drain",
                "tail-events finished: delivering every queued batch, then exiting",
            )
            self.events.on_completed()
            stop_task = asyncio.ensure_future(self._stop_requested.wait())
            await asyncio.wait([drained, stop_task], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
            if not drained.done():
                await self._stop_agents()
                return Exit.OK
            stop_task.cancel()
            if drained.exception() is not None:
                return Exit.FAILURE
            left = self.dispatcher.pending_events()
            if left:
                who = ", ".join(f"{name} ({len(events)} events)" for name, events in left.items())
                agents = "1 agent" if len(left) == 1 else f"{len(left)} agents"
                self.bus.notice(
                    Level.ERROR,
                    "drain",
                    f"{agents} could not be given {'its' if len(left) == 1 else 'their'}"
                    f" events: {who}; see the errors above",
                )
                return Exit.FAILURE
            self.bus.notice(Level.INFO, "drain", "every batch delivered; exiting")
            return Exit.OK
        # GAVE_UP: the external supervisor takes over; running agents finish (their timeouts
        # bound them), nothing new starts.
        self.bus.notice(
            Level.ERROR,
            "tail-events",
            f"gave up: the stream was not healthy again within the {self.config.retry:g}s "
            "retry window; exiting with status 3 for the supervisor to restart ghit-work",
        )
        for agent in self.dispatcher.agents.values():
            agent.stopping = True
        await self.dispatcher.wait_idle()
        return Exit.SOURCE_GAVE_UP

    async def _stop_agents(self) -> None:
        running = list(self.dispatcher.running)
        if running:
            self.bus.notice(
                Level.INFO,
                "stop",
                f"stopping: terminating {', '.join(running)} (SIGTERM, then SIGKILL)",
            )
        await self.dispatcher.stop()

    def request_stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        assert self._stop_requested is not None
        self._signals += 1
        if self._signals > 1 and sig == signal.SIGINT:
            self.bus.notice(Level.WARNING, "stop", "second interrupt: killing agents now")
            for invocation in self.dispatcher.running.values():
                invocation.kill()
            return
        self.bus.notice(Level.INFO, "stop", f"{signal.Signals(sig).name} received: stopping")
        self._stop_requested.set()
