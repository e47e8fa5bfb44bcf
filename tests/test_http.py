"""SPEC §10 through the real command: status, /healthz, /api/v1/state, /metrics, bad requests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from typing import Any

from conftest import Running, Setup, event, ghit_work, poll, write_events
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "ghp-secret-token-4242"


def address(daemon: Running) -> str:
    text = daemon.wait_for("http: serving on ")
    found = re.search(r"http: serving on (http://[\d.]+:\d+)", text)
    assert found, text
    return found.group(1)


def get(url: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text, headers = get(f"{base}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


USAGE_AGENT = """\
import os, sys, time
sys.stdin.read()
print("used 100 in, 7 out, cost $0.5", flush=True)
time.sleep(float(os.environ.get("SLEEP", "0")))
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def configure(setup: Setup, **top: Any) -> None:
    setup.agent_py.write_text(USAGE_AGENT)
    usage = [
        r"used (?P<input_tokens>\d+) in, (?P<output_tokens>\d+) out, cost \$(?P<cost_usd>[\d.]+)"
    ]
    setup.write_config(
        {
            "good": {"usage_patterns": usage, "env": {}},
            "bad": {"usage_patterns": usage, "run_attempts": 1, "env": {"EXIT": "1"}},
            "slow": {"event_kinds": ["pull-created"], "env": {"SLEEP": "60"}},
        },
        tail=["--follow"],
        http="127.0.0.1:0",
        **top,
    )


def test_every_endpoint_and_metrics_that_match_what_happened(setup: Setup) -> None:
    configure(setup)
    env = {**os.environ, "GHIT_API_TOKEN": TOKEN}
    with Running(setup.path, env=env) as daemon:
        base = address(daemon)
        write_events(setup.events, [event(1), event(2, kind="pull-created")])
        daemon.wait_for("agent good: working -> idle, exit 0")
        daemon.wait_for("dead letter 1 (1 event")
        daemon.wait_for("agent slow: queued -> working")
        write_events(setup.events, [event(3, kind="pull-created")])  # waits behind slow's run

        status, body, _ = get(f"{base}/healthz")
        assert (status, json.loads(body)) == (200, {"status": "healthy"})

        def state() -> dict[str, Any]:
            status, body, headers = get(f"{base}/api/v1/state")
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            parsed: dict[str, Any] = json.loads(body)
            return parsed

        def at_cursor_3() -> dict[str, Any] | None:
            current = state()
            return current if current["stream"]["cursor"] == 3 else None

        current = poll(at_cursor_3, what="cursor 3")
        assert current is not None
        assert current["stream"]["state"] == "healthy"
        agents = {agent["name"]: agent for agent in current["agents"]}
        assert agents["good"]["usage"]["input_tokens"] == 100
        assert agents["good"]["usage"]["cost_today_usd"] == 0.5
        assert agents["bad"]["dead_letters"] == 1
        assert agents["slow"]["state"] == "working" and agents["slow"]["batch"] == [2]
        run = agents["good"]["runs"][-1]
        assert (run["outcome"], run["event_ids"], run["input_tokens"]) == ("ok", [1], 100)
        for key in ("start", "end", "exit_status", "attempt", "output_tokens", "cost_usd"):
            assert key in run

        def slow_queued() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            found = metrics(base)
            return found if found.get(("ghitwork_queue_length", (("agent", "slow"),))) else None

        found = poll(slow_queued, what="slow's queue of 1")
        assert found is not None
        assert found[("ghitwork_queue_length", (("agent", "slow"),))] == 1
        assert found[("ghitwork_events_total", ())] == 3
        assert found[("ghitwork_deliveries_total", (("agent", "good"),))] == 1
        assert found[("ghitwork_runs_total", (("agent", "good"), ("outcome", "ok")))] == 1
        assert found[("ghitwork_runs_total", (("agent", "bad"), ("outcome", "failed")))] == 1
        assert found[("ghitwork_tokens_total", (("agent", "good"), ("type", "input")))] == 100
        assert found[("ghitwork_tokens_total", (("agent", "bad"), ("type", "output")))] == 7
        assert found[("ghitwork_cost_usd_total", (("agent", "bad"),))] == 0.5
        assert found[("ghitwork_dead_letters", (("agent", "bad"),))] == 1
        assert found[("ghitwork_agents_working", ())] == 1
        assert found[("ghitwork_run_duration_seconds_count", (("agent", "good"),))] == 1
        assert found[("ghitwork_stream_restarts_total", ())] == 0
        assert not any(name.endswith("_created") for name, _ in found)

        status, page, headers = get(f"{base}/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "no external asset"
        assert get(f"{base}/healthz", "POST")[0] == 405
        assert get(f"{base}/api/v1/state", "DELETE")[0] == 405
        assert get(f"{base}/nothing-here")[0] == 404
        for path in ("/healthz", "/api/v1/state", "/metrics", "/"):
            assert TOKEN not in get(f"{base}{path}")[1], path
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_status_with_and_without_an_instance(setup: Setup) -> None:
    configure(setup)
    missing = ghit_work("status", cwd=setup.path)
    assert missing.returncode == 1
    assert missing.stderr.startswith("ghit-work: error: no ghit-work is running on state_dir ")
    with Running(setup.path) as daemon:
        base = address(daemon)
        write_events(setup.events, [event(1)])
        daemon.wait_for("agent good: working -> idle, exit 0")

        def shown() -> str:
            result = ghit_work("status", cwd=setup.path)
            assert result.returncode == 0, result.stderr
            return result.stdout if "$0.50 today" in result.stdout else ""

        text = poll(shown, what="the status to show good's cost")
        assert "stream: healthy, cursor 1" in text
        assert re.search(r"good\s+idle\s+queue 0\s+attempt 1/3\s+\$0.50 today", text), text
        assert re.search(r"bad\s+failing.*dead letters 1", text), text
        as_json = json.loads(ghit_work("status", "--json", cwd=setup.path).stdout)
        _, body, _ = get(f"{base}/api/v1/state")
        assert set(as_json) == set(json.loads(body)), "one snapshot, two ways"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert ghit_work("status", cwd=setup.path).returncode == 1, "it stopped"


def test_healthz_is_200_while_the_stream_retries_and_503_once_a_stop_begins(
    setup: Setup,
) -> None:
    trap = setup.path / "trap.py"
    trap.write_text(
        "import signal, sys, time\nsys.stdin.read()\n"
        "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(3), sys.exit(0)))\n"
        "print('started', flush=True)\ntime.sleep(60)\n"
    )
    setup.write_config(
        {"a": {"cmd": [sys.executable, str(trap)]}},
        tail=["--fail-at-start"],
        http="127.0.0.1:0",
        retry="10m",
    )
    with Running(setup.path) as daemon:
        base = address(daemon)
        daemon.wait_for("tail-events: retry in ")
        status, body, _ = get(f"{base}/healthz")
        assert (status, json.loads(body)["status"]) == (200, "retrying")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    setup.write_config(
        {"a": {"cmd": [sys.executable, str(trap)]}}, tail=["--follow"], http="127.0.0.1:0"
    )
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        base = address(daemon)
        daemon.wait_for("agent a| started")
        assert get(f"{base}/healthz")[0] == 200
        daemon.signal(signal.SIGTERM)  # the agent takes 3 s to stop: so does ghit-work
        daemon.wait_for("stopping")
        status, body, _ = get(f"{base}/healthz")
        assert (status, json.loads(body)["status"]) == (503, "stopping")
        assert daemon.wait() == 0


def test_bad_requests_get_errors_and_leave_it_serving(setup: Setup) -> None:
    configure(setup)
    with Running(setup.path) as daemon:
        base = address(daemon)
        host, port = base.removeprefix("http://").split(":")
        idle = socket.create_connection((host, int(port)), timeout=10)  # sends nothing
        try:
            for raw in (
                b"GARBAGE\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
                b"GET /" + b"p" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            ):
                with socket.create_connection((host, int(port)), timeout=10) as bad:
                    bad.sendall(raw)
                    answer = bad.recv(200)
                    assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), (raw[:20], answer)
            assert get(f"{base}/healthz")[0] == 200, "served while a client idles"
        finally:
            idle.close()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_a_port_in_use_is_a_start_up_error_naming_http(setup: Setup) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        setup.write_config({"a": {}}, http=f"127.0.0.1:{port}")
        result = ghit_work(cwd=setup.path)
        assert result.returncode == 2
        assert result.stderr == (
            f"ghit-work: error: ghit-work.toml: ghit-work.http: cannot listen on "
            f"127.0.0.1:{port}: Address already in use\n"
        )
        assert not (setup.path / ".ghit-work").exists(), "nothing started"
        flag = ghit_work("--http", f"127.0.0.1:{port}", "check", cwd=setup.path)
        assert flag.returncode == 0
    bad = ghit_work("--http", "nowhere", cwd=setup.path)
    assert bad.returncode == 2 and "is not HOST:PORT" in bad.stderr


def test_an_agents_own_key_printed_in_an_error_is_never_shown_or_served(setup: Setup) -> None:
    key = "sk-agent-secret-9911"
    leaky = setup.path / "leaky.py"
    leaky.write_text(
        "import os, sys\nsys.stdin.read()\n"
        "sys.stderr.write('auth failed for key ' + os.environ['OPENAI_API_KEY'] + '\\n')\n"
        "sys.exit(1)\n"
    )
    setup.write_config(
        {
            "a": {
                "cmd": [sys.executable, str(leaky)],
                "run_attempts": 1,
                "env": {"OPENAI_API_KEY": key},
            }
        },
        tail=["--follow"],
        http="127.0.0.1:0",
    )
    write_events(setup.events, [event(1)])
    with Running(setup.path) as daemon:
        base = address(daemon)
        text = daemon.wait_for("dead letter 1 (")
        assert "auth failed for key ***" in text and key not in text
        for path in ("/api/v1/state", "/metrics", "/"):
            assert key not in get(f"{base}{path}")[1], path
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert key not in (setup.path / ".ghit-work" / "status.json").read_text()
