"""The HTTP side's listening: a capped site and the server it makes (SPEC §11).

At most `http_max_connections` connections are open at once, and one past it is answered 503
and closed at once, so that clients never take the descriptors runs and state writes need
(CappedSite accepts them itself, so this holds however many come at once). Both that and
accept() out of descriptors are reported at most once a minute with a count
(status.Repeats). An idle connection is closed after IDLE seconds.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket

from aiohttp import web

from ghitwork.bus.changes import Level
from ghitwork.observe.status import Repeats

IDLE = 15.0  # seconds an open connection may send nothing


class Server:
    def __init__(
        self, runner: web.AppRunner, host: str, port: int, repeats: Repeats | None = None
    ) -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self.repeats = repeats

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()
        if self.repeats is not None:
            self.repeats.flush()  # how many more were refused since the last line


async def serve(
    app: web.Application,
    host: str,
    port: int,
    max_connections: int = 256,
    repeats: Repeats | None = None,
) -> Server:
    """Listen now; OSError when the address cannot be bound."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, keepalive_timeout=IDLE)
    await runner.setup()
    site = CappedSite(runner, host, port, max_connections, repeats)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return Server(runner, host, site.port, repeats)


BACKLOG = 128  # the listen() queue: connections the kernel holds, no descriptor of ours yet
ACCEPTS = 100  # accepted at most per readiness of a listening socket (as asyncio does)
OUT_OF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
RETRY = 1.0  # seconds before accepting again when accept() is out of descriptors or memory


class CappedSite(web.BaseSite):
    """aiohttp's TCPSite with a hard cap on open connections, counted from accept to close.

    It accepts on its own listening sockets, one connection at a time, and decides in the
    same callback: under `cap`, the connection is counted and handed to aiohttp; past it, its
    descriptor is closed at once, unanswered, before the next accept. So the HTTP side never
    holds more than its listening sockets, `cap` and the one being refused, however many
    clients come at once (asyncio's own accept loop takes up to 100 per readiness before any
    of them is refused, and a refused one's transport closes only at the next iteration)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        cap: int,
        repeats: Repeats | None = None,
    ) -> None:
        super().__init__(runner)
        self.host = host
        self.port = port
        self.cap = cap
        self.repeats = repeats
        self.open = 0
        self.sockets: list[socket.socket] = []
        self.waiting: dict[socket.socket, asyncio.TimerHandle] = {}  # out of descriptors
        self.connecting: set[asyncio.Task[object]] = set()

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and listen on every address `host` names (port 0: the one the first got);
        OSError when one cannot be bound."""
        await super().start()
        loop = asyncio.get_running_loop()
        found = await loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        port = self.port
        try:
            for family, kind, proto, _, address in dict.fromkeys(found):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
                sock.listen(BACKLOG)
                sock.setblocking(False)
                port = sock.getsockname()[1]
        except OSError:
            self.close_sockets()
            raise
        self.port = port
        for sock in self.sockets:
            loop.add_reader(sock.fileno(), self.ready, sock)

    async def stop(self) -> None:
        """Stop listening (aiohttp's runner.cleanup calls this before it closes the open
        connections); a connection still being handed to aiohttp is closed."""
        self.close_sockets()
        for task in self.connecting:
            task.cancel()
        await super().stop()  # unregisters the site

    def close_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        for handle in self.waiting.values():
            handle.cancel()
        self.waiting.clear()
        for sock in self.sockets:
            if sock.fileno() >= 0:
                loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets.clear()

    def ready(self, listening: socket.socket) -> None:
        """A listening socket is readable: accept what waits, deciding on each at once."""
        for _ in range(ACCEPTS):
            try:
                sock, peer = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in OUT_OF:
                    self.out_of(listening, error)
                    return
                continue  # that one connection is gone already (ECONNABORTED, ...)
            self.take(sock, peer)

    def take(self, sock: socket.socket, peer: object) -> None:
        sock.setblocking(False)
        if self.open >= self.cap:  # closed at once (SPEC §11): no answer, so no 503 that
            sock.close()  # a /healthz probe would read as "stopping" (§10)
            self.refused(peer)
            return
        server = self._runner.server
        assert server is not None  # the runner is set up
        counted = _Counted(server(), self)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: counted, sock))
        self.connecting.add(task)
        task.add_done_callback(lambda done: self.connected(done, sock, counted, peer))

    def connected(
        self, task: asyncio.Task[object], sock: socket.socket, counted: _Counted, peer: object
    ) -> None:
        self.connecting.discard(task)
        if not task.cancelled() and task.exception() is None:
            return
        sock.close()
        counted.release()
        error = None if task.cancelled() else task.exception()
        if error is not None and self.repeats is not None:
            self.repeats(
                ("connect", type(error).__name__),
                Level.ERROR,
                "http",
                f"connection from {remote(peer)} closed: cannot serve it: {error!r}",
            )

    def out_of(self, listening: socket.socket, error: OSError) -> None:
        """Out of descriptors (or memory): what waits stays in the kernel's queue, and
        accepting starts again in RETRY seconds."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(listening.fileno())
        self.waiting[listening] = loop.call_later(RETRY, self.again, listening)
        if self.repeats is None:
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.repeats(
            ("accept", error.errno),
            Level.ERROR,
            "http",
            f"cannot accept a connection: {os.strerror(error.errno or 0)} (open files "
            f"limit {soft}); new connections wait, accepting again in a second",
        )

    def again(self, listening: socket.socket) -> None:
        del self.waiting[listening]
        asyncio.get_running_loop().add_reader(listening.fileno(), self.ready, listening)

    def refused(self, peer: object) -> None:
        if self.repeats is None:
            return
        self.repeats(
            "refused",
            Level.WARNING,
            "http",
            f"connection from {remote(peer)} closed at once: {self.cap} open at once is "
            f"http_max_connections; idle ones are closed after {IDLE:g}s",
        )


def remote(peer: object) -> object:
    return peer[0] if isinstance(peer, tuple) and peer else "a client"


class _Counted(asyncio.Protocol):
    """aiohttp's handler of one connection, counted by its site from accept until the
    connection is lost (its descriptor is closed right after)."""

    def __init__(self, handler: asyncio.Protocol, site: CappedSite) -> None:
        self.handler = handler
        self.site = site
        self.counted = True
        site.open += 1

    def release(self) -> None:
        if self.counted:
            self.counted = False
            self.site.open -= 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()
        self.handler.connection_lost(exc)
