"""A stub model server (stdlib only) for running the real agent CLIs offline, on 127.0.0.1.

It speaks just enough of two wire APIs for `codex exec` and `claude -p`:
  POST /v1/responses   OpenAI Responses, streamed (codex)
  POST /v1/messages    Anthropic Messages, streamed (claude); HEAD / answers its probe
Every answer is "done: hello" with fixed, recognisable usage (USAGE below). `POST /__mode`
with body `ok` or `429` switches to rate-limiting every model call (HTTP 429, Retry-After: 1).
Each request is logged as a JSON line (method, path, headers) to --log.

    python tests/stub_model.py --log requests.jsonl      # prints "port N", then serves
"""

from __future__ import annotations

import argparse
import json
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
MODE = {"mode": "ok"}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_path = "requests.jsonl"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _log(self) -> None:
        entry = {"t": time.time(), "method": self.command, "path": self.path}
        entry["headers"] = {k.lower(): v for k, v in self.headers.items()}
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
            MODE["mode"] = body.decode().strip()
            return self._json(200, MODE)
        self._log()
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = {}
        path = self.path.split("?")[0]
        model_call = path.endswith("/responses") or path.endswith("/messages")
        if model_call and MODE["mode"] == "429":
            error = {"type": "rate_limit_error", "message": "stub: rate limited"}
            return self._json(429, {"type": "error", "error": error}, {"Retry-After": "1"})
        if path.endswith("/responses"):
            return self._events(openai(request))
        if path.endswith("/messages"):
            return self._events(anthropic(request))
        return self._json(200, {})


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
    args = parser.parse_args()
    Handler.log_path = args.log
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
