"""A stub model server (stdlib only) for running the real agent CLIs offline, on 127.0.0.1.

It speaks just enough of two wire APIs for `codex exec` and `claude -p`:
  POST /v1/responses   OpenAI Responses, streamed (codex)
  POST /v1/messages    Anthropic Messages, streamed (claude); HEAD / answers its probe
Every answer is "done: hello" with fixed, recognisable usage (USAGE below). `POST /__mode`
(or `--mode` at start) switches what every model call gets:

  ok                          the answer above
  429                         a plain rate limit: HTTP 429, Retry-After: 1
  usage_limit&reset=N[&claim=C][&plan=P]
                              an account at its usage limit, as each provider answers it
                              (docs/agents.md#quota-windows): the window resets at N, POSIX
                              seconds (`+S`: S seconds from the switch), and from then on
                              every call gets the answer again. Anthropic: 429 with
                              `anthropic-ratelimit-unified-*` headers, the claim C (five_hour,
                              the default; seven_day, seven_day_opus, ...); Claude Code prints
                              "You've hit your session limit · resets 5:41pm (Europe/Berlin)"
                              for a subscription login (CLAUDE_CODE_OAUTH_TOKEN, not
                              ANTHROPIC_API_KEY). OpenAI: 429 with error type
                              `usage_limit_reached`, `resets_at` N and plan_type P (none by
                              default); codex prints "You\u2019ve hit your usage limit. Try again
                              at 5:41 PM." in its local zone.
Each request is logged as a JSON line (method, path, headers, and for a model call the working
directory the CLI says it runs in, `cwd`) to --log.

    python tests/stub_model.py --log requests.jsonl      # prints "port N", then serves
    python tests/stub_model.py --mode 'usage_limit&reset=+7800&claim=five_hour'
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = "done: hello"
OPENAI_USAGE = {
    "input_tokens": 1234,
    "input_tokens_details": {"cached_tokens": 200},
    "output_tokens": 56,
    "output_tokens_details": {"reasoning_tokens": 7},
    "total_tokens": 1290,
}
ANTHROPIC_USAGE = {
    "input_tokens": 1234,
    "cache_creation_input_tokens": 300,
    "cache_read_input_tokens": 200,
    "output_tokens": 56,
}
MODE: dict[str, str] = {"mode": "ok"}
LOCK = threading.Lock()
# Where each CLI tells the model its working directory: codex in its environment context,
# Claude Code in its system prompt.
CWD = re.compile(r"<cwd>([^<\n]+)</cwd>|Primary working directory: ([^\n]+)")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_path = "requests.jsonl"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _log(self, request: object = None) -> None:
        entry: dict[str, Any] = {"t": time.time(), "method": self.command, "path": self.path}
        entry["headers"] = {k.lower(): v for k, v in self.headers.items()}
        if request is not None:  # a model call
            entry["cwd"] = working_directory(request)
        with LOCK, open(self.log_path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def _json(self, code: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for name, data in events:
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_HEAD(self) -> None:
        self._log()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._log()
        self._json(404, {"error": {"message": f"stub: no GET {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/__mode":
            try:
                new = parse_mode(body.decode())
            except ValueError as wrong:
                return self._json(400, {"error": {"message": f"stub: {wrong}"}})
            MODE.clear()
            MODE.update(new)
            return self._json(200, MODE)
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = {}
        path = self.path.split("?")[0]
        model_call = path.endswith("/responses") or path.endswith("/messages")
        self._log(request if model_call else None)
        if model_call and MODE["mode"] == "429":
            error = {"type": "rate_limit_error", "message": "stub: rate limited"}
            return self._json(429, {"type": "error", "error": error}, {"Retry-After": "1"})
        if model_call and MODE["mode"] == "usage_limit" and time.time() < int(MODE["reset"]):
            return self._json(429, *usage_limit(path, MODE))
        if path.endswith("/responses"):
            return self._events(openai(request))
        if path.endswith("/messages"):
            return self._events(anthropic(request))
        return self._json(200, {})


def parse_mode(text: str) -> dict[str, str]:
    """`ok`, `429` or `usage_limit&reset=N&claim=C&plan=P` as a mode; ValueError if unknown.
    A reset `+S` is made absolute here: S seconds from now."""
    name, _, rest = text.strip().partition("&")
    pairs = [part.partition("=") for part in rest.split("&") if part]
    if any(not sep for _, sep, _ in pairs):
        raise ValueError(f"not name=value: {rest!r}")
    params = {key: value for key, _, value in pairs}  # no unquoting: "+" stays a plus
    if name in ("ok", "429") and not params:
        return {"mode": name}
    if name != "usage_limit":
        raise ValueError(f"unknown mode {text.strip()!r}")
    unknown = set(params) - {"reset", "claim", "plan"}
    if unknown or "reset" not in params:
        raise ValueError(f"usage_limit takes reset=N (and claim, plan), not {sorted(unknown)}")
    reset = params["reset"]
    seconds = int(time.time()) + int(reset[1:]) if reset.startswith("+") else int(reset)
    return {
        "mode": name,
        **params,
        "reset": str(seconds),
        "claim": params.get("claim") or "five_hour",
    }


def usage_limit(path: str, mode: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of a provider's 429 for an account at its usage limit.

    Anthropic (what Claude Code 2.1.197 reads, `amp`/`Oda`): the unified rate-limit headers
    name the limit (the claim) and its reset; with them, and a subscription (OAuth) login,
    Claude Code does not retry and prints its usage-limit message. OpenAI (codex-cli 0.169.0,
    `map_api_error`): an error of type `usage_limit_reached` with `resets_at`; codex does not
    retry it either."""
    reset = int(mode["reset"])
    if path.endswith("/messages"):
        headers = {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-representative-claim": mode["claim"],
            "anthropic-ratelimit-unified-reset": str(reset),
            "x-should-retry": "false",
        }
        limited = {"type": "rate_limit_error", "message": "Rate limited"}
        return {"type": "error", "error": limited}, headers
    error: dict[str, Any] = {
        "type": "usage_limit_reached",
        "message": "The usage limit has been reached",
        "resets_at": reset,
    }
    if mode.get("plan"):
        error["plan_type"] = mode["plan"]
    return {"error": error}, {}


def working_directory(request: object) -> str | None:
    """The working directory the first string naming one in the request gives, or None."""
    if isinstance(request, str):
        found = CWD.search(request)
        return (found.group(1) or found.group(2)).strip() if found else None
    if isinstance(request, dict):
        request = list(request.values())
    for value in request if isinstance(request, list) else ():
        cwd = working_directory(value)
        if cwd is not None:
            return cwd
    return None


def openai(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    message_id = "msg_" + uuid.uuid4().hex[:24]
    response: dict[str, Any] = {
        "id": "resp_" + uuid.uuid4().hex[:24],
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": request.get("model", "gpt-stub"),
        "output": [],
    }
    text = {"type": "output_text", "text": REPLY, "annotations": []}
    item = {"type": "message", "id": message_id, "role": "assistant", "status": "completed"}
    done_item = {**item, "content": [text]}
    where = {"item_id": message_id, "output_index": 0, "content_index": 0}
    return [
        ("response.created", {"type": "response.created", "response": response}),
        (
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "content": []},
            },
        ),
        (
            "response.output_text.delta",
            {"type": "response.output_text.delta", **where, "delta": REPLY},
        ),
        (
            "response.output_text.done",
            {"type": "response.output_text.done", **where, "text": REPLY},
        ),
        (
            "response.output_item.done",
            {"type": "response.output_item.done", "output_index": 0, "item": done_item},
        ),
        (
            "response.completed",
            {
                "type": "response.completed",
                "response": {
                    **response,
                    "status": "completed",
                    "output": [done_item],
                    "usage": OPENAI_USAGE,
                },
            },
        ),
    ]


def anthropic(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    message = {
        "id": "msg_stub_" + uuid.uuid4().hex[:16],
        "type": "message",
        "role": "assistant",
        "model": request.get("model", "claude-stub"),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**ANTHROPIC_USAGE, "output_tokens": 1},
    }
    return [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": REPLY},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": ANTHROPIC_USAGE["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log", default="requests.jsonl")
    parser.add_argument("--mode", default="ok", help="the mode to start in (see above)")
    args = parser.parse_args()
    Handler.log_path = args.log
    MODE.clear()
    MODE.update(parse_mode(args.mode))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
