"""The HTTP side (`http = "HOST:PORT"`): health, state, metrics and a status page.

aiohttp's web server runs on the daemon's own asyncio loop (no thread, no lock: it reads the
same model the TUI draws), and prometheus_client renders the metrics. Both are imported only
when `http` is set: start-up without it stays as fast as before.

    GET /healthz        200 {"status": "healthy"|"retrying"|"starting"}, 503 while stopping
    GET /api/v1/state   the snapshot (snapshot.py), as `ghit-work status --json` prints it
    GET /metrics        Prometheus text format
    GET /               the status page: one self-contained HTML file that polls the API

Other paths are 404, other methods 405; malformed requests get aiohttp's 400, and an idle
connection is closed after IDLE seconds. Everything is read-only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry

from ghitwork import metrics
from ghitwork.config import Config, ConfigError, parse_http_address
from ghitwork.dispatch import Dispatcher
from ghitwork.snapshot import Snapshots
from ghitwork.state import StateBus

IDLE = 15.0  # seconds an open connection may send nothing
UNHEALTHY = ("stopping", "failing")


def application(
    snapshot: Callable[[], bytes],
    health: Callable[[], str],
    metrics: CollectorRegistry,
) -> web.Application:
    page = resources.files("ghitwork").joinpath("templates/status.html").read_bytes()

    async def healthz(request: web.Request) -> web.Response:
        state = health()
        return web.json_response({"status": state}, status=503 if state in UNHEALTHY else 200)

    async def state(request: web.Request) -> web.Response:
        return web.Response(
            body=snapshot(),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def exposition(request: web.Request) -> web.Response:
        body = generate_latest(metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def index(request: web.Request) -> web.Response:
        return web.Response(
            body=page,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                "script-src 'unsafe-inline'",
            },
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/state", state)
    app.router.add_get("/metrics", exposition)
    app.router.add_get("/", index)
    return app


async def start(
    address: str, config: Config, bus: StateBus, snapshots: Snapshots, dispatcher: Dispatcher
) -> Server:
    """Count for the metrics from now on, and listen on `address`; a ConfigError naming
    `http` when it cannot be bound (exit 2: nothing else has started)."""
    counts = metrics.Counts()
    bus.changes.subscribe(counts)
    app = application(
        snapshots.body, lambda: snapshots.model.health, metrics.registry(counts, dispatcher)
    )
    host, port = parse_http_address(address)
    try:
        return await serve(app, host, port)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        why = f"cannot listen on {address}: {reason}"
        raise ConfigError(str(config.path), "ghit-work.http", why) from None


class Server:
    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner = runner
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application, host: str, port: int) -> Server:
    """Listen now; OSError when the address cannot be bound."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, keepalive_timeout=IDLE)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    return Server(runner, host, bound)
