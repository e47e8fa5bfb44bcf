"""Process-wide settings the daemon makes once, when its loop starts."""

from __future__ import annotations

import asyncio
import gc
import sys

GC_YOUNG = 500_000  # new container objects between collections of the youngest generation


def tune_gc() -> None:
    """A catch-up keeps hundreds of thousands of young objects alive (events waiting in
    queues), and with CPython's default (a collection every 700 new containers) the cyclic
    collector cost more than decoding them; even at 50,000 it took a tenth of a catch-up's
    time, finding nothing (reference counting frees what ghit-work drops: a 100,000-event
    catch-up leaves a few hundred objects in cycles). So what start-up made is set aside for
    good, and the youngest generation is collected every GC_YOUNG new containers.
    Figures: docs/performance.md."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, middle, old)


def use_pidfd_child_watcher() -> None:
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
