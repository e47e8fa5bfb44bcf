"""The HTTP side (`http = "HOST:PORT"`): health, state, metrics and a status page.

aiohttp's web server runs on the daemon's own asyncio loop (no thread, no lock: it reads the
same model the TUI draws), and prometheus_client renders the metrics. Both are imported only
when `http` is set: start-up without it stays as fast as before.

    GET /healthz        200 {"status": "healthy"|"retrying"|"starting"}, 503 while stopping
    GET /api/v1/state   the snapshot (snapshot.py), as `ghit-work status --json` prints it
    GET /metrics        Prometheus text format
    GET /               the status page: one self-contained HTML file that polls the API

With `http_token_file` (SPEC §13), the control routes (control.py), each answering JSON:

    POST /api/v1/agents/NAME/pause      {"reason": "...", "for": "2h"}, both optional
    POST /api/v1/agents/NAME/resume     {"conversation": "thread:..."}, optional
    POST /api/v1/agents/NAME/redeliver  every dead letter of the agent handed back
    POST /api/v1/agents/NAME/kill       its running runs stopped (SIGTERM, then SIGKILL)

They need `Authorization: Bearer TOKEN` (compared in constant time: 401 without it, 403
wrong; 404 for an unknown agent), and a request whose Origin is another site's is refused
(403): a page elsewhere can neither send the header without a preflight nobody answers, nor
post from another origin. `http_auth = "all"` guards the page, `/api/v1/state` and `/metrics`
too (`/healthz` never; the page asks a browser for the token as HTTP Basic's password). Each control
action is a status line (topic `control`) naming the action, the agent and the client.

Other paths are 404, other methods 405; malformed requests get aiohttp's 400, and an idle
connection is closed after IDLE seconds. Without a token, everything is read-only.

Containment (SPEC §11): at most `http_max_connections` connections are open at once, and one
past it is answered 503 and closed at once, so that clients never take the descriptors runs
and state writes need (site.CappedSite accepts them itself, so this holds however many come at
once); bound to a loopback address, a request whose Host is not a loopback address or
`localhost` gets 421 (DNS rebinding). Both, accept() out of descriptors, and the bad requests
aiohttp refuses (runtime.LogRecords), are reported at most once a minute with a count
(status.Repeats).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable, Collection
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry

from ghitwork.bus.changes import Level, StateBus
from ghitwork.config.model import Config, ConfigError, parse_http_address
from ghitwork.http import metrics
from ghitwork.http.control import (
    ACTIONS,
    MAX_BODY,
    Controls,
    Guard,
    control_handler,
    reads_guarded,
)
from ghitwork.http.site import Server, serve
from ghitwork.observe.snapshot import Snapshots
from ghitwork.observe.status import Repeats

UNHEALTHY = ("stopping", "failing")


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (a host as bound, or as named in a Host header)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host a Host header names, without its port: "[::1]:9090" -> "::1"."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, colon, port = header.rpartition(":")
    return name if colon and port.isdigit() and ":" not in name else header


def loopback_only(repeats: Repeats) -> Middleware:
    """A middleware for a server bound to loopback: a browser sends the Host it thinks it
    reaches, so a page of evil.example whose name was rebound to 127.0.0.1 says so (421)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Host", "")
        if is_loopback(host_name(header)):
            return await handler(request)
        repeats(
            "host",
            Level.WARNING,
            "http",
            f"request for Host {header[:100]!r} from {request.remote} answered 421: bound to "
            "loopback, this server answers only Host localhost or a loopback address",
        )
        return web.Response(
            status=421,
            text="421 Misdirected Request: this server answers only requests for localhost "
            "or a loopback address\n",
        )

    return check


def application(
    snapshot: Callable[[], Awaitable[bytes]],
    health: Callable[[], str],
    metrics: CollectorRegistry,
    middlewares: tuple[Middleware, ...] = (),
    control: Handler | None = None,
) -> web.Application:
    page = resources.files("ghitwork").joinpath("templates/status.html").read_bytes()

    async def healthz(request: web.Request) -> web.Response:
        state = health()
        return web.json_response({"status": state}, status=503 if state in UNHEALTHY else 200)

    async def state(request: web.Request) -> web.Response:
        return web.Response(
            body=await snapshot(),
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
                "script-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY",  # its buttons are never clicked inside another page
                "Referrer-Policy": "no-referrer",
            },
        )

    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v1/state", state)
    app.router.add_get("/metrics", exposition)
    app.router.add_get("/", index)
    if control is not None:
        actions = "|".join(ACTIONS)
        app.router.add_post(f"/api/v1/agents/{{name}}/{{action:{actions}}}", control)
    return app


GUARDED_READS = ("/", "/api/v1/state", "/metrics")  # with http_auth = "all"


async def start(
    address: str,
    config: Config,
    bus: StateBus,
    snapshots: Snapshots,
    controls: Controls | None = None,
) -> Server:
    """Count for the metrics from now on, and listen on `address`; a ConfigError naming
    `http` when it cannot be bound (exit 2: nothing else has started). The control routes
    exist when `http_token_file` is set and `controls` given."""
    counts = metrics.Counts()
    bus.changes.subscribe(counts)
    snapshots.serving = True  # the API's body is kept between changes, and written too
    host, port = parse_http_address(address)
    repeats = Repeats(bus.notice)
    middlewares: list[Middleware] = [loopback_only(repeats)] if is_loopback(host) else []
    handler = None
    if config.http_token:
        guard = Guard(config.http_token, repeats)
        if config.http_auth == "all":
            middlewares.append(reads_guarded(guard, GUARDED_READS))
        if controls is not None:
            model = snapshots.model

            def known() -> Collection[str]:
                current = model.config or config
                return {agent.name for agent in current.agents}

            handler = control_handler(controls, guard, known, bus.notice)
    app = application(
        snapshots.state,
        lambda: snapshots.model.health,
        metrics.registry(counts, snapshots.model),
        tuple(middlewares),
        handler,
    )
    try:
        return await serve(app, host, port, config.http_max_connections, repeats)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        why = f"cannot listen on {address}: {reason}"
        raise ConfigError(str(config.path), "ghit-work.http", why) from None
