"""SPEC §13's control over HTTP through the real command: POST /api/v1/agents/NAME/pause,
resume, redeliver and kill exist only with http_token_file, need the bearer token (401
without, 403 wrong, 404 for an unknown agent), refuse another site's page, and each action
does what its command or key does, with a status line naming it, the agent and the client.
`http_auth = "all"` guards the reads too, never /healthz. In-process: the token is compared
with hmac.compare_digest, and what counts as the server's own origin."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from conftest import Running, Setup, event, poll, write_events
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from ghitwork.bus.changes import Level
from ghitwork.http import control, web
from ghitwork.observe.status import Repeats

TOKEN = "ctl-0f3a9c2e7b5d4e61a8"  # what http_token_file holds


def address(daemon: Running) -> str:
    found = re.search(r"http: serving on (http://[\d.]+:\d+)", daemon.wait_for("serving on"))
    assert found
    return found.group(1)


def call(
    url: str,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
    """(status, the JSON answer (or text), headers), whatever the status."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            status, text, got = answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        status, text, got = error.code, error.read().decode(), dict(error.headers)
    try:
        return status, json.loads(text), got
    except ValueError:
        return status, text, got


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_token(setup: Setup, agents: Mapping[str, Mapping[str, Any]], **top: Any) -> None:
    (setup.path / "control.token").write_text(TOKEN + "\n")
    setup.write_config(
        agents,
        tail=["--follow"],
        http="127.0.0.1:0",
        http_token_file="control.token",
        **top,
    )


def test_the_routes_need_the_token_refuse_other_sites_and_name_known_agents(
    setup: Setup,
) -> None:
    with_token(setup, {"a": {}})
    with Running(setup.path) as daemon:
        base = address(daemon)
        pause = f"{base}/api/v1/agents/a/pause"
        status, body, headers = call(pause)
        assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="ghit-work"')
        assert body == {"error": "no bearer token (Authorization: Bearer TOKEN)"}
        assert call(pause, headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        assert call(pause, headers={"Authorization": "Bearer"})[0] == 401
        status, body, headers = call(pause, headers=bearer(TOKEN[:-1] + "x"))
        assert (status, body) == (403, {"error": "wrong bearer token"})
        assert "WWW-Authenticate" not in headers
        assert call(pause, headers=bearer(TOKEN + "x"))[0] == 403
        # Who is not authorized never learns which agents exist: 401 before 404.
        assert call(f"{base}/api/v1/agents/nobody/pause")[0] == 401
        status, body, _ = call(f"{base}/api/v1/agents/nobody/pause", headers=bearer())
        assert (status, body) == (404, {"error": "no agent 'nobody'"})
        assert call(f"{base}/api/v1/agents/a/frobnicate", headers=bearer())[0] == 404
        assert call(pause, method="GET", headers=bearer())[0] == 405
        assert call(pause, method="PUT", headers=bearer())[0] == 405

        # A page of another site: refused, even with the token (a browser would have asked
        # first, and nobody answers the preflight).
        evil = {**bearer(), "Origin": "http://evil.example"}
        status, body, _ = call(pause, headers=evil)
        assert (status, body) == (403, {"error": "cross-origin request refused"})
        assert call(pause, headers={**bearer(), "Origin": "null"})[0] == 403
        assert call(pause, headers={**bearer(), "Sec-Fetch-Site": "cross-site"})[0] == 403
        assert call(pause, headers={**bearer(), "Sec-Fetch-Site": "same-site"})[0] == 403
        # DNS rebinding still meets the loopback Host check first.
        assert call(pause, headers={**bearer(), "Host": "evil.example"})[0] == 421

        for bad, why in (
            (b"{", "not JSON"),
            (b"[]", "not a JSON object"),
            (b'{"reason": 5}', '"reason" is not a string'),
            (b'{"reason": "two\\nlines"}', "one line of at most 500 printable characters"),
            (b'{"reason": "\\u001b[2Jclear"}', "printable characters"),
            (b'{"for": "soon"}', "is not a duration"),
            (b'{"for": "0s"}', "more than 0"),
            (b'{"until": "2h"}', 'pause takes "reason", "for"; not \'until\''),
        ):
            status, body, _ = call(pause, headers=bearer(), body=bad)
            assert status == 400 and isinstance(body, dict), bad
            assert why in body["error"], (bad, body)
        status, body, _ = call(
            f"{base}/api/v1/agents/a/resume", headers=bearer(), body=b'{"conversation": "x"}'
        )
        assert status == 400 and "a thread: scope" in str(body)

        # The page's own origin (what a browser sends from the status page) is fine.
        own = {**bearer(), "Origin": base, "Sec-Fetch-Site": "same-origin"}
        status, body, _ = call(f"{base}/api/v1/agents/a/resume", headers=own)
        assert (status, body) == (
            200,
            {"agent": "a", "action": "resume", "resumed": True, "conversation": None},
        )
        # Reads stay open with http_auth = "control" (the default).
        assert call(f"{base}/api/v1/state", method="GET")[0] == 200
        assert call(f"{base}/metrics", method="GET")[0] == 200
        text = daemon.wait_for("agent a: resume over HTTP from 127.0.0.1: resumed")
        assert "http: pause of agent 'a' from 127.0.0.1 refused (401): no bearer token" in text
        assert "refused (403): wrong bearer token" in text
        assert (
            "http: control request from 127.0.0.1 refused (403): sent by a page of another "
            "site (Origin 'http://evil.example')"
        ) in text
        assert "paused" not in text, "no refused request did anything"
        for path in ("/api/v1/state", "/metrics", "/"):
            assert TOKEN not in str(call(f"{base}{path}", method="GET")[1])
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert TOKEN not in daemon.text


def test_without_a_token_file_there_are_no_control_routes(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--follow"], http="127.0.0.1:0")
    with Running(setup.path) as daemon:
        base = address(daemon)
        for action in control.ACTIONS:
            url = f"{base}/api/v1/agents/a/{action}"
            assert call(url, headers=bearer())[0] == 404, action
            assert call(url, method="GET")[0] == 404, action
        assert call(f"{base}/api/v1/state", method="POST")[0] == 405  # SPEC §10, as before
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert "over HTTP" not in daemon.text


LONG_AGENT = """\
import os, sys, time
prompt = sys.stdin.read()
with open(os.environ["RECORD"], "a") as f:
    f.write(prompt.strip() + "\\n")
if "slow" in prompt:
    time.sleep(60)
"""


def delivered(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_pause_holds_runs_resume_delivers_kill_stops_redeliver_hands_back(
    setup: Setup,
) -> None:
    setup.agent_py.write_text(LONG_AGENT)
    record = setup.path / "prompts.txt"
    with_token(
        setup,
        {"a": {"env": {"RECORD": str(record)}}, "b": {"event_kinds": ["pull-created"]}},
        prompt="{% for e in events %}{{ e.id }}:{{ e.summary.thread_title }} {% endfor %}",
    )
    with Running(setup.path) as daemon:
        base = address(daemon)
        agent = f"{base}/api/v1/agents/a"

        # pause: no run starts, its events wait; the answer says until when
        status, body, _ = call(
            f"{agent}/pause", headers=bearer(), body=b'{"reason": "deploying", "for": "2h"}'
        )
        assert status == 200 and isinstance(body, dict)
        assert (body["paused"], body["reason"]) == (True, "deploying")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["until"])
        text = daemon.wait_for("agent a: pause over HTTP from 127.0.0.1: paused until ")
        assert re.search(r"paused until \d\d:\d\d:\d\dZ \(for 2h\): deploying", text)
        assert "agent a: paused until" in text and "by http 127.0.0.1: deploying" in text
        # the same fields in the query string, or as a form (curl -X POST '…/pause?for=1h')
        status, body, _ = call(f"{base}/api/v1/agents/b/pause?for=1h&reason=q", headers=bearer())
        assert status == 200 and isinstance(body, dict) and body["reason"] == "q", body
        assert body["until"] is not None
        form = {**bearer(), "Content-Type": "application/x-www-form-urlencoded"}
        status, body, _ = call(f"{base}/api/v1/agents/b/pause", headers=form, body=b"reason=f")
        assert status == 200 and isinstance(body, dict) and body["reason"] == "f", body
        assert call(f"{base}/api/v1/agents/b/resume", headers=bearer())[0] == 200
        write_events(setup.events, [event(1, title="quick")])
        daemon.wait_for("agent a: idle -> paused")

        def agent_a() -> dict[str, Any]:
            state = call(f"{base}/api/v1/state", method="GET")[1]
            assert isinstance(state, dict)
            found: dict[str, Any] = next(x for x in state["agents"] if x["name"] == "a")
            return found

        shown = poll(lambda: (a := agent_a())["queue"] == 1 and a, what="a's queue of 1")
        assert shown["state"] == "paused" and "deploying" in shown["problem"]
        assert delivered(record) == []

        # resume: the held event runs at once
        status, body, _ = call(f"{agent}/resume", headers=bearer())
        assert (status, body) == (
            200,
            {"agent": "a", "action": "resume", "resumed": True, "conversation": None},
        )
        poll(lambda: delivered(record) == ["1:quick"], what="event 1 after the resume")
        daemon.wait_for("agent a: resume over HTTP from 127.0.0.1: resumed")

        # kill: nothing works now (409), then a slow run is stopped; its batch is a dead letter
        daemon.wait_for("agent a: working -> idle, exit 0")
        status, body, _ = call(f"{agent}/kill", headers=bearer())
        assert status == 409 and body == {
            "agent": "a",
            "action": "kill",
            "killed": False,
            "error": "agent 'a' is not working: nothing to stop",
        }
        daemon.wait_for("agent a: kill over HTTP from 127.0.0.1: not working: nothing to stop")
        write_events(setup.events, [event(2, title="slow")])
        poll(lambda: delivered(record)[-1:] == ["2:slow"], what="the slow run")
        status, body, _ = call(f"{agent}/kill", headers=bearer())
        assert (status, body) == (200, {"agent": "a", "action": "kill", "killed": True})
        text = daemon.wait_for("dead letter 1 (1 event")
        assert "agent a: kill over HTTP from 127.0.0.1: its run stopped" in text
        assert "stopped by the operator" in text

        # redeliver: every dead letter of the agent handed back, and run again
        assert call(f"{base}/api/v1/agents/b/redeliver", headers=bearer())[1] == {
            "agent": "b",
            "action": "redeliver",
            "redelivered": 0,
        }
        status, body, _ = call(f"{agent}/redeliver", headers=bearer())
        assert (status, body) == (200, {"agent": "a", "action": "redeliver", "redelivered": 1})
        poll(lambda: delivered(record)[-1:] == ["2:slow"] and len(delivered(record)) == 3)
        text = daemon.wait_for("agent a: redeliver over HTTP from 127.0.0.1: 1 dead letter(s)")
        assert "agent b: redeliver over HTTP from 127.0.0.1: no dead letters" in text
        call(f"{agent}/kill", headers=bearer())  # the redelivered slow run, so the stop is quick
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    lines = [line for line in daemon.text.splitlines() if "over HTTP from" in line]
    assert len(lines) == 10, lines  # one status line per action, each naming agent and client


ASKING = """\
import sys
prompt = sys.stdin.read()
print("NEEDS INPUT: which branch should I push to?" if "ask" in prompt else "done")
"""


def needs_input(base: str) -> dict[str, float]:
    status, text, _ = call(f"{base}/metrics", method="GET", headers=bearer())
    assert status == 200 and isinstance(text, str)
    return {
        sample.labels["agent"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ghitwork_needs_input"
    }


def test_resume_wakes_a_conversation_that_needs_input_and_the_gauge_counts_it(
    setup: Setup,
) -> None:
    setup.agent_py.write_text(ASKING)
    with_token(
        setup,
        {
            "a": {
                "needs_input_pattern": r"^NEEDS INPUT: (?P<question>.+)",
                "conversations": "thread",
            },
            "b": {},
        },
        prompt="{% for e in events %}{{ e.summary.thread_title }} {% endfor %}",
        http_auth="all",
    )
    with Running(setup.path) as daemon:
        base = address(daemon)
        assert needs_input(base) == {"a": 0, "b": 0}
        write_events(setup.events, [event(1, title="please ask")])
        daemon.wait_for("agent a [thread:teams/ghit/ghit/39]: working -> needs-input")
        poll(lambda: needs_input(base) == {"a": 1, "b": 0}, what="a's conversation counted")

        def conversations() -> list[dict[str, Any]]:
            state = call(f"{base}/api/v1/state", method="GET", headers=bearer())[1]
            assert isinstance(state, dict)
            found: list[dict[str, Any]] = next(x for x in state["agents"] if x["name"] == "a")[
                "conversations"
            ]
            return found

        (waiting,) = poll(conversations, what="a's conversation in the snapshot (0.25 s old)")
        assert waiting["state"] == "needs-input"
        assert waiting["question"] == "which branch should I push to?"
        thread = waiting["conversation"]
        assert thread == "thread:teams/ghit/ghit/39"
        body = json.dumps({"conversation": thread}).encode()
        status, answer, _ = call(f"{base}/api/v1/agents/a/resume", headers=bearer(), body=body)
        assert (status, answer) == (
            200,
            {"agent": "a", "action": "resume", "resumed": True, "conversation": thread},
        )
        daemon.wait_for(f"agent a: resume over HTTP from 127.0.0.1: woke {thread}")
        daemon.wait_for("agent a [thread:teams/ghit/ghit/39]: needs-input -> idle")
        poll(lambda: needs_input(base) == {"a": 0, "b": 0}, what="none waiting any more")
        # again: nothing waits there now, and the line says so rather than "woke"
        status, answer, _ = call(f"{base}/api/v1/agents/a/resume", headers=bearer(), body=body)
        assert status == 200 and isinstance(answer, dict) and answer["resumed"] is True
        daemon.wait_for(
            f"agent a: resume over HTTP from 127.0.0.1: {thread} is not waiting for input: "
            "nothing to wake"
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_http_auth_all_guards_the_reads_but_never_healthz(setup: Setup) -> None:
    with_token(setup, {"a": {}}, http_auth="all")
    with Running(setup.path) as daemon:
        base = address(daemon)
        for path in ("/api/v1/state", "/metrics"):
            status, _, headers = call(f"{base}{path}", method="GET")
            assert (status, headers.get("WWW-Authenticate")) == (401, 'Bearer realm="ghit-work"')
            assert call(f"{base}{path}", method="GET", headers=bearer("x" * 20))[0] == 403
            assert call(f"{base}{path}", method="GET", headers=bearer())[0] == 200, path
        assert call(f"{base}/healthz", method="GET")[:2] == (200, {"status": "healthy"})
        # The page is a read too: a browser is asked for the token as Basic's password
        status, _, headers = call(f"{base}/", method="GET")
        assert (status, headers.get("WWW-Authenticate")) == (401, 'Basic realm="ghit-work"')
        wrong = {"Authorization": "Basic " + base64.b64encode(b"me:guess").decode()}
        status, _, headers = call(f"{base}/", method="GET", headers=wrong)  # asked again
        assert (status, headers.get("WWW-Authenticate")) == (401, 'Basic realm="ghit-work"')
        basic = {"Authorization": "Basic " + base64.b64encode(f"me:{TOKEN}".encode()).decode()}
        for path in ("/", "/api/v1/state", "/metrics"):
            assert call(f"{base}{path}", method="GET", headers=basic)[0] == 200, path
        # what a browser remembered, sent by another site's page: refused
        elsewhere = {**basic, "Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}
        assert call(f"{base}/api/v1/state", method="GET", headers=elsewhere)[0] == 403
        typed = {**basic, "Sec-Fetch-Site": "none"}  # the address bar
        assert call(f"{base}/", method="GET", headers=typed)[0] == 200
        status, page, _ = call(f"{base}/", method="GET", headers=bearer())
        assert status == 200 and isinstance(page, str) and 'id="token"' in page
        # never a control route: a browser sends cached Basic credentials by itself
        assert call(f"{base}/api/v1/agents/a/pause", headers=basic)[0] == 401
        text = daemon.wait_for("http: read of /api/v1/state from 127.0.0.1 refused (401)")
        assert "read of /api/v1/state from 127.0.0.1 refused (403): wrong bearer token" in text
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


# -- in-process: the comparison, and what counts as the server's own origin


class Recorded:
    """A Controls that records what it was asked."""

    def __init__(self) -> None:
        self.done: list[tuple[Any, ...]] = []

    def pause(self, name: str, by: str, reason: str, until: float | None) -> bool:
        self.done.append(("pause", name, by, reason, until))
        return True

    def resume(self, name: str, by: str, conversation: str | None) -> int | None:
        self.done.append(("resume", name, by, conversation))
        return 1

    def redeliver(self, name: str, by: str) -> int:
        self.done.append(("redeliver", name, by))
        return 2

    def kill(self, name: str, by: str) -> bool:
        self.done.append(("kill", name, by))
        return True


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return bool(original(given, expected))

    monkeypatch.setattr(hmac, "compare_digest", spy)  # what control.Guard calls, looked up then
    lines: list[tuple[Level, str, str, str | None]] = []
    controls = Recorded()
    guard = control.Guard(TOKEN, Repeats(lambda level, topic, message: None))
    handler = control.control_handler(
        controls,
        guard,
        lambda: {"a"},
        lambda level, topic, message, agent: lines.append((level, topic, message, agent)),
        clock=lambda: 1000.0,
    )

    async def state() -> bytes:
        return b"{}"

    app = web.application(state, lambda: "healthy", CollectorRegistry(), (), handler)

    async def scenario() -> None:
        async with TestClient(TestServer(app)) as client:
            answer = await client.post("/api/v1/agents/a/pause", headers=bearer("wrong-token"))
            assert answer.status == 403
            answer = await client.post(
                "/api/v1/agents/a/pause", headers=bearer(), json={"reason": "r", "for": 60}
            )
            assert answer.status == 200
            assert await answer.json() == {
                "agent": "a",
                "action": "pause",
                "paused": True,
                "reason": "r",
                "until": "1970-01-01T00:17:40.000Z",
            }
            for action in ("redeliver", "kill"):
                answer = await client.post(f"/api/v1/agents/a/{action}", headers=bearer())
                assert answer.status == 200, action

    asyncio.run(scenario())
    assert compared[0] == (b"wrong-token", TOKEN.encode())
    assert compared[1:] == [(TOKEN.encode(), TOKEN.encode())] * 3
    assert controls.done == [
        ("pause", "a", "http 127.0.0.1", "r", 1060.0),
        ("redeliver", "a", "http 127.0.0.1"),
        ("kill", "a", "http 127.0.0.1"),
    ]
    assert [(topic, agent) for _, topic, _, agent in lines] == [("control", "a")] * 3
    assert lines[1][2] == "redeliver over HTTP from 127.0.0.1: 2 dead letter(s) handed back"


@pytest.mark.parametrize(
    ("headers", "same"),
    [
        ({}, True),  # curl, a script: no Origin
        ({"Origin": "http://127.0.0.1:9090"}, True),
        ({"Origin": "http://127.0.0.1:9091"}, False),
        ({"Origin": "http://localhost:9090"}, False),  # another origin for the browser
        ({"Origin": "null"}, False),
        ({"Origin": "https://evil.example"}, False),
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:9090"}, True),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),
        # behind a proxy that passes Host localhost and the name it was asked for
        ({"Origin": "https://work.example", "X-Forwarded-Host": "work.example"}, True),
        ({"Origin": "https://evil.example", "X-Forwarded-Host": "work.example"}, False),
    ],
)
def test_what_counts_as_the_servers_own_origin(headers: dict[str, str], same: bool) -> None:
    request = make_mocked_request("POST", "/", headers={"Host": "127.0.0.1:9090", **headers})
    assert control.same_origin(request) is same


def test_a_control_requests_fields_come_from_its_body_form_or_query() -> None:
    assert control.request_fields("pause", b"", {"for": "2h"}) == {"for": "2h"}
    both = control.request_fields("pause", b'{"for": "1h"}', {"for": "2h", "reason": "q"})
    assert both == {"for": "1h", "reason": "q"}, "the body wins"
    form = control.request_fields("pause", b"reason=a+b&for=5m", {}, form=True)
    assert form == {"reason": "a b", "for": "5m"}
    blank = control.request_fields("resume", b"conversation=", {}, form=True)
    assert blank == {}, "a field left empty is absent: not the agent's own conversation"
    assert control.request_fields("pause", b"", {"for": "", "reason": "r"}) == {"reason": "r"}
    with pytest.raises(control.BadRequest, match="not 'until'"):
        control.request_fields("pause", b"", {"until": "2h"})
