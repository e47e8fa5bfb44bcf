"""The control routes of the HTTP side (SPEC §13), with `http_token_file`, each answering JSON:

    POST /api/v1/agents/NAME/pause      {"reason": "...", "for": "2h"}, both optional
    POST /api/v1/agents/NAME/resume     {"conversation": "thread:..."}, optional
    POST /api/v1/agents/NAME/redeliver  every dead letter of the agent handed back
    POST /api/v1/agents/NAME/kill       its running runs stopped (SIGTERM, then SIGKILL)

They need `Authorization: Bearer TOKEN` (compared in constant time: 401 without it, 403
wrong; 404 for an unknown agent), and a request whose Origin is another site's is refused
(403): a page elsewhere can neither send the header without a preflight nobody answers, nor
post from another origin. `http_auth = "all"` guards the page, `/api/v1/state` and `/metrics`
too (reads_guarded; a read also takes the token as HTTP Basic's password, so that a browser
can open the page). Each control action is a status line (topic `control`) naming the action,
the agent and the client.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ghitwork.bus.changes import Level
from ghitwork.model.durations import DurationError, clock_time, format_duration, parse_duration
from ghitwork.model.formatting import iso
from ghitwork.observe.status import Repeats

MAX_BODY = 64 * 1024  # bytes: a control request's JSON body at most (reads have none)
MAX_REASON = 500  # characters of a pause's reason
ACTIONS = ("pause", "resume", "redeliver", "kill")
FIELDS = {"pause": ("reason", "for"), "resume": ("conversation",), "redeliver": (), "kill": ()}


class Controls(Protocol):
    """What the control routes do to the running instance (the daemon's side: app/control.py,
    Daemon.redeliver, Dispatcher.terminate). `by` names who asked ("http 127.0.0.1"); False
    (or 0) when there was nothing to do it to."""

    def pause(self, name: str, by: str, reason: str, until: float | None) -> bool: ...

    def resume(self, name: str, by: str, conversation: str | None) -> int | None: ...

    def redeliver(self, name: str, by: str) -> int: ...  # every dead letter of the agent

    def kill(self, name: str, by: str) -> bool: ...  # False: no run of it was working


def client(request: web.Request) -> str:
    """Who asked, as status lines name them: the peer's address, and what a proxy in front
    says it forwarded for (only what the proxy says: behind one, the peer is the proxy)."""
    peer = request.remote or "a client"
    forwarded = request.headers.get("X-Forwarded-For", "").strip()
    return f"{peer} (forwarded for {forwarded[:100]!r})" if forwarded else peer


def same_origin(request: web.Request) -> bool:
    """False for a browser's request sent by a page of another site: an Origin (or
    Sec-Fetch-Site) that is not this server's own. A request without them (curl, a script)
    is not a browser's cross-site one. The scheme is not compared (TLS may end at a proxy in
    front, which passes the host it was asked for as Host or X-Forwarded-Host)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null": a sandboxed frame, a file, a redirect across sites
    own = {request.headers.get("Host", "").lower()}
    forwarded = request.headers.get("X-Forwarded-Host", "")
    if forwarded:
        own.add(forwarded.split(",")[0].strip().lower())
    return parts.netloc.lower() in own


class Guard:
    """The bearer token of `http_token_file`: checked in constant time (hmac.compare_digest),
    never taken from a cookie or the URL. A refusal is a status line, once a minute at most
    per kind (a scanner, a misconfigured Prometheus), with a count."""

    def __init__(self, token: str, repeats: Repeats) -> None:
        self.token = token.encode()
        self.repeats = repeats

    def refused(
        self, request: web.Request, what: str, basic: Literal["ask", "take"] | None = None
    ) -> web.Response | None:
        """None when `request` carries the token; else the answer (401 without one, 403 for
        a wrong one), reported. `basic`: a read, which also takes the token as HTTP Basic's
        password (any user name), so that a browser can open the page; its 401 asks for
        Basic when `basic` is "ask" (the page itself), else for Bearer. Never a control
        route: a browser sends cached Basic credentials by itself."""
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        given, scheme = given.strip(), scheme.lower()
        challenge = 'Basic realm="ghit-work"' if basic == "ask" else 'Bearer realm="ghit-work"'
        if scheme == "basic" and basic is not None and given:
            # A browser sends what it remembered by itself, to any site's request: taken
            # only from this server's own pages, or a page typed into the address bar.
            if not same_origin(request):
                return self._refuse(request, what, 403, "basic credentials from another site")
            try:
                pair = base64.b64decode(given, validate=True).decode("utf-8", "surrogateescape")
            except ValueError:
                pair = ""
            password = pair.partition(":")[2]
            if not hmac.compare_digest(password.encode("utf-8", "surrogateescape"), self.token):
                # 401 again, not 403: a browser then asks anew instead of resending a typo
                return self._refuse(request, what, 401, "wrong token", challenge)
            return None
        if scheme != "bearer" or not given:
            why = "no bearer token (Authorization: Bearer TOKEN)"
            return self._refuse(request, what, 401, why, challenge)
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token):
            return self._refuse(request, what, 403, "wrong bearer token")
        return None

    def _refuse(
        self, request: web.Request, what: str, status: int, why: str, challenge: str = ""
    ) -> web.Response:
        self.repeats(
            ("auth", status),
            Level.WARNING,
            "http",
            f"{what} from {client(request)} refused ({status}): {why}",
        )
        headers = {"WWW-Authenticate": challenge} if challenge else {}
        return answer(status, {"error": why}, headers)


def answer(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body) + "\n",
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def reads_guarded(guard: Guard, paths: Collection[str]) -> Middleware:
    """`http_auth = "all"`: the reads in `paths` need the token too (as a Bearer token, or
    as HTTP Basic's password: the page, `/`, asks a browser for it that way)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in paths:
            refused = guard.refused(
                request, f"read of {request.path}", "ask" if request.path == "/" else "take"
            )
            if refused is not None:
                return refused
        return await handler(request)

    return check


def printable(text: str) -> bool:
    """No control character: what a client sends may end up in a status line."""
    return not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


class BadRequest(ValueError):
    """A control request's body that cannot be done: its message says why (400)."""


def request_fields(
    action: str, body: bytes, query: Mapping[str, str] | None = None, form: bool = False
) -> dict[str, Any]:
    """A control request's fields, checked for `action`: a JSON object in the body (empty:
    none), or an HTML form's (`form`: sent as application/x-www-form-urlencoded, and not
    JSON: `curl -d '{...}'` says form too), and the query string's (`?for=2h&reason=...`);
    the body's win over the query's."""
    # a blank form or query field is one left empty: absent (an HTML form sends them all)
    fields: dict[str, Any] = {key: value for key, value in (query or {}).items() if value}
    text = body.strip()
    if form and text and text[:1] not in (b"{", b"["):
        fields.update(parse_qsl(body.decode("utf-8", "replace")))
    elif text:
        try:
            sent = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is not JSON (send a JSON object, or nothing)") from None
        if not isinstance(sent, dict):
            raise BadRequest("the body is not a JSON object")
        fields.update(sent)
    allowed = FIELDS[action]
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        takes = ", ".join(f'"{name}"' for name in allowed) or "no field"
        raise BadRequest(f"{action} takes {takes}; not {', '.join(map(repr, unknown))}")
    return fields


def pause_fields(fields: Mapping[str, Any], now: float) -> tuple[str, float | None]:
    reason = fields.get("reason", "")
    if not isinstance(reason, str):
        raise BadRequest('"reason" is not a string')
    if len(reason) > MAX_REASON or not printable(reason):
        raise BadRequest(f'"reason" is one line of at most {MAX_REASON} printable characters')
    lasting = fields.get("for")
    if lasting is None:
        return reason, None
    try:
        seconds = parse_duration(lasting)
    except DurationError as error:
        raise BadRequest(f'"for": {error}') from None
    if seconds <= 0:
        raise BadRequest('"for" must be more than 0 (or left out: paused until resumed)')
    return reason, now + seconds


def control_handler(
    controls: Controls,
    guard: Guard,
    known: Callable[[], Collection[str]],
    notice: Callable[[Level, str, str, str | None], None],
    clock: Callable[[], float] = time.time,
) -> Handler:
    """POST /api/v1/agents/NAME/ACTION."""

    async def control(request: web.Request) -> web.StreamResponse:
        name, action = request.match_info["name"], request.match_info["action"]
        who = client(request)
        if not same_origin(request):
            guard.repeats(
                "origin",
                Level.WARNING,
                "http",
                f"control request from {who} refused (403): sent by a page of another site "
                f"(Origin {request.headers.get('Origin', '')[:100]!r})",
            )
            return answer(403, {"error": "cross-origin request refused"})
        refused = guard.refused(request, f"{action} of agent {name!r}")
        if refused is not None:
            return refused
        if name not in known():
            return answer(404, {"error": f"no agent {name!r}"})
        try:
            form = request.content_type == "application/x-www-form-urlencoded"
            fields = request_fields(action, await request.read(), request.query, form)
            reply = act(controls, action, name, f"http {who}", fields, clock())
        except BadRequest as error:
            return answer(400, {"error": str(error)})
        if reply is None:
            return answer(404, {"error": f"no agent {name!r}"})
        status, body, said = reply
        notice(Level.INFO, "control", f"{action} over HTTP from {who}: {said}", name)
        return answer(status, {"agent": name, "action": action, **body})

    return control


def act(
    controls: Controls,
    action: str,
    name: str,
    by: str,
    fields: Mapping[str, Any],
    now: float,
) -> tuple[int, dict[str, Any], str] | None:
    """Do `action`: (status, the answer's fields, what the status line says), or None when
    the agent is gone (removed by a reload meanwhile)."""
    if action == "pause":
        reason, until = pause_fields(fields, now)
        if not controls.pause(name, by, reason, until):
            return None
        lasting = ""
        if until is not None:
            lasting = f" until {clock_time(until, now)} (for {format_duration(until - now)})"
        said = f"paused{lasting}" + (f": {reason}" if reason else "")
        shown = {"paused": True, "reason": reason, "until": None if until is None else iso(until)}
        return 200, shown, said
    if action == "resume":
        conversation = fields.get("conversation")
        thread = (
            isinstance(conversation, str)
            and conversation.startswith("thread:")
            and len(conversation) <= MAX_REASON * 2
            and printable(conversation)
        )
        if conversation is not None and conversation != "" and not thread:
            raise BadRequest('"conversation" is a thread: scope, or "" for the agent\'s own')
        woken = controls.resume(name, by, conversation)
        if woken is None:
            return None
        named = conversation or "(no thread)"
        said = "resumed" if conversation is None else f"woke {named}"
        if conversation is not None and not woken:
            said = f"{named} is not waiting for input: nothing to wake"
        return 200, {"resumed": True, "conversation": conversation}, said
    if action == "redeliver":
        count = controls.redeliver(name, by)
        said = f"{count} dead letter(s) handed back" if count else "no dead letters to hand back"
        return 200, {"redelivered": count}, said
    if controls.kill(name, by):
        said = "its run stopped (SIGTERM, SIGKILL after the grace); its batch is a dead letter"
        return 200, {"killed": True}, said
    error = f"agent {name!r} is not working: nothing to stop"
    return 409, {"killed": False, "error": error}, "not working: nothing to stop"
