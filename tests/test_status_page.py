"""The status page in a real browser: headless Chromium, driven through the DevTools protocol,
sees an agent's state change without a reload."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Running, Setup, event, poll, write_events

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium: `apt-get install chromium` (.ci/run installs it, so CI never skips)",
)


class Page:
    """One page of a headless Chromium, over the DevTools protocol's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=30)
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer.get("result", {}).get("value")

    async def wait_for(self, expression: str, expected: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value == expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expression} is {value!r}, not {expected!r}")


@contextlib.asynccontextmanager
async def opened(debug_port: int) -> AsyncIterator[Page]:
    """The browser's page, over its DevTools websocket, with its page events on."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{debug_port}/json/list") as answer:
            targets = await answer.json()
        target = next(t for t in targets if t["type"] == "page")
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            await page.call("Page.enable")
            yield page


def start_chromium(profile: Path) -> tuple[subprocess.Popen[bytes], int]:
    assert CHROMIUM is not None
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # as root in CI
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # its singleton socket's directory (org.chromium.Chromium.*) goes with the profile,
        # not into /tmp for good: SIGKILL leaves it no chance to remove it
        env={**os.environ, "TMPDIR": str(profile)},
    )
    port_file = profile / "DevToolsActivePort"
    text = poll(lambda: port_file.exists() and port_file.read_text(), 30, "Chromium's port")
    return process, int(str(text).split()[0])


async def watch_page(debug_port: int, url: str, setup: Setup) -> None:
    async with opened(debug_port) as page:
        await page.call("Page.navigate", url=url)
        state = "document.querySelector('tr[data-agent=\"a\"] .state')?.textContent ?? null"
        await page.wait_for(state, "idle")
        await page.evaluate("window.loadedOnce = 'yes'")  # gone if the page reloads
        assert await page.evaluate("document.getElementById('health').textContent") == ("healthy")
        write_events(setup.events, [event(1)])
        await page.wait_for(state, "working")
        await page.wait_for(
            "document.querySelector('tr[data-agent=\"a\"] .batch').textContent", "1"
        )
        await page.wait_for(state, "idle")
        await page.wait_for(
            "document.querySelector('tr[data-agent=\"a\"] .last-run').textContent"
            ".startsWith('ok [1]')",
            True,
        )
        assert await page.evaluate("window.loadedOnce") == "yes", "it never reloaded"
        events = await page.evaluate("document.getElementById('events').textContent")
        assert "1 reply-created by alice -> a" in events
        html = await page.evaluate("document.documentElement.outerHTML")
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


def in_chromium(
    daemon: Running, watch: Callable[[int, str, Setup], Coroutine[Any, Any, None]], setup: Setup
) -> None:
    """`watch(devtools_port, page_url, setup)` with a headless Chromium on the page that
    `daemon` serves; the browser is killed afterwards, however it went."""
    text = daemon.wait_for("http: serving on ")
    found = re.search(r"serving on (http://\S+) ", text)
    assert found
    with tempfile.TemporaryDirectory() as profile:
        browser, port = start_chromium(Path(profile))
        try:
            asyncio.run(watch(port, found.group(1) + "/", setup))
        finally:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()


def test_the_status_page_shows_a_state_change_without_a_reload(setup: Setup) -> None:
    setup.write_config(
        {"a": {"env": {"RECORD": str(setup.records), "SLEEP": "2"}}},
        tail=["--follow"],
        http="127.0.0.1:0",
    )
    with Running(setup.path) as daemon:
        in_chromium(daemon, watch_page, setup)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


BASIC_TOKEN = "page-0c41d9e27f6b"


async def watch_with_basic(debug_port: int, url: str, setup: Setup) -> None:
    """`http_auth = "all"`: the page asks the browser for the token (HTTP Basic); given it
    (here in the URL, as a user would type it at the prompt), the page and its reads work."""
    async with opened(debug_port) as page:
        await page.call("Page.navigate", url=url.replace("http://", f"http://me:{BASIC_TOKEN}@"))
        state = "document.querySelector('tr[data-agent=\"a\"] .state')?.textContent ?? null"
        await page.wait_for(state, "idle")
        write_events(setup.events, [event(1)])
        await page.wait_for(
            "document.querySelector('tr[data-agent=\"a\"] .last-run')?.textContent"
            "?.startsWith('ok [1]') ?? false",
            True,
        )


def test_with_http_auth_all_the_page_asks_the_browser_for_the_token(setup: Setup) -> None:
    (setup.path / "control.token").write_text(BASIC_TOKEN + "\n")
    setup.write_config(
        {"a": {}},
        tail=["--follow"],
        http="127.0.0.1:0",
        http_token_file="control.token",
        http_auth="all",
    )
    with Running(setup.path) as daemon:
        in_chromium(daemon, watch_with_basic, setup)
        assert "refused (403)" not in daemon.text
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


WAITING_AGENT = """\
import os, sys, time
sys.stdin.read()
while not os.path.exists(os.environ["RELEASE"]):
    time.sleep(0.02)
"""
KEY = "sk-page-3c9e1f77"


async def watch_queue(debug_port: int, url: str, setup: Setup) -> None:
    async with opened(debug_port) as page:
        await page.call("Page.navigate", url=url)
        row = "document.querySelector('tr[data-agent=\"a\"] {}')?.textContent ?? null"
        write_events(setup.events, [event(1)])
        await page.wait_for(row.format(".batch"), "1")
        write_events(setup.events, [event(2), event(3)])
        await page.wait_for(row.format(".queue"), "2")
        assert await page.evaluate(row.format(".state")) == "working"
        attention = await page.evaluate("document.getElementById('attention').textContent")
        assert "/***/agent" in attention and KEY not in attention
        html = await page.evaluate("document.documentElement.outerHTML")
        assert KEY not in html


def test_the_status_page_shows_the_queue_the_moment_events_wait_and_no_secret(
    setup: Setup,
) -> None:
    """Issue 21 #9 and #10 on the page: agent a works on [1] while 2 more events wait (queue
    2 at once, not at a's next state change); agent b's missing command names a's key, which
    the attention list shows as ***."""
    setup.agent_py.write_text(WAITING_AGENT)
    release = setup.path / "release"
    setup.write_config(
        {
            "a": {"env": {"RELEASE": str(release), "API_KEY": KEY}},
            "b": {"cmd": [str(setup.path / KEY / "agent")], "event_kinds": ["pull-created"]},
        },
        tail=["--follow"],
        http="127.0.0.1:0",
    )
    with Running(setup.path) as daemon:
        in_chromium(daemon, watch_queue, setup)
        release.touch()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


# -- the charts and the control field (SPEC §13, issue 24): what people would rather see

CHARTED_AGENT = """\
import os, sys, time
prompt = sys.stdin.read()
time.sleep(30 if "slow" in prompt else float(os.environ.get("SLEEP", "0.4")))
print(f"used 1200 in, 80 out, cost ${os.environ['COST']}", flush=True)
if "ask" in prompt:
    print("NEEDS INPUT: which branch should I push to?", flush=True)
sys.exit(1 if "fail" in prompt else 0)
"""
USAGE = r"used (?P<input_tokens>\d+) in, (?P<output_tokens>\d+) out, cost \$(?P<cost_usd>[\d.]+)"
CONTROL_TOKEN = "page-ctl-5e1b7a0c94d2"


def spent_before(state_dir: Path, costs: dict[str, list[float]]) -> None:
    """What the agents spent on the 13 days before today, as the journal keeps it (a fresh
    state dir's first journal, replayed at start into the usage ledger)."""
    from ghitwork.model.usage import Charge, Usage, day_of

    state_dir.mkdir(mode=0o700)
    now = time.time()
    lines = []
    for agent, per_day in costs.items():
        for back, cost in enumerate(per_day, start=1):
            moment = now - back * 86400
            usage = Usage(int(cost * 40000), int(cost * 900), int(cost * 20000), cost)
            charge = Charge(agent=agent, time=moment, day=day_of(moment), usage=usage)
            lines.append(json.dumps({"usage": charge.to_record()}))
    (state_dir / "journal-0.jsonl").write_text("\n".join(lines) + "\n")


async def watch_charts(debug_port: int, url: str, setup: Setup) -> None:
    async with opened(debug_port) as page:
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        await page.call("Page.navigate", url=url)
        state = "document.querySelector('tr[data-agent=\"{}\"] .state')?.textContent ?? null"
        await page.wait_for(state.format("claude"), "working")  # the slow run, on its way
        await page.wait_for(state.format("gemini"), "needs-input")
        bars = "document.getElementById('{}').querySelectorAll('rect.bar{}').length"
        await page.wait_for(f"{bars.format('timeline', '')} >= 6", True)
        hour = await page.evaluate(
            "[...document.querySelectorAll('#timeline .axis text')].map((t) => t.textContent)"
        )
        assert len(hour) == 7 and hour[-1] == "now", hour  # a line every 10 minutes
        for outcome in ("ok", "failed", "working"):
            count = await page.evaluate(bars.format("timeline", f".outcome-{outcome}"))
            assert count >= 1, outcome
        # 13 days before today for two agents, today for three (gemini: only today)
        await page.wait_for(bars.format("costs", ""), 2 * 13 + 3)
        assert await page.evaluate(
            "document.querySelector('#costs text.total:last-of-type')?.textContent"
        )
        assert await page.evaluate("document.getElementById('timeline').dataset.bars") == (
            str(await page.evaluate(bars.format("timeline", "")))
        )

        # Hovering a run: its batch, tokens and cost.
        failed = "document.querySelector('#timeline rect.outcome-failed')"
        await page.evaluate(f"{failed}.scrollIntoView({{block: 'center'}})")
        box = await page.evaluate(
            f"(() => {{ const r = {failed}.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
        await page.wait_for("getComputedStyle(document.getElementById('tip')).display", "block")
        tip = await page.evaluate("document.getElementById('tip').textContent")
        assert "codex: failed (exit 1)" in tip and "batch [4]" in tip, tip
        assert "tokens: 1200 in, 80 out; cost: $0.42" in tip, tip
        await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=5, y=5)
        await page.evaluate("window.scrollTo(0, 0)")

        # No control before the token: the buttons are there, hidden.
        visible = (
            "[...document.querySelectorAll('button[data-action]')]"
            ".filter((b) => b.offsetParent !== null).length"
        )
        assert await page.evaluate(visible) == 0
        waiting = "document.getElementById('waiting').textContent"
        assert "which branch should I push to?" in await page.evaluate(waiting)
        await page.evaluate(
            f"document.getElementById('token').value = '{CONTROL_TOKEN}';"
            "document.getElementById('use-token').click()"
        )
        assert await page.evaluate("sessionStorage.getItem('ghit-work.token')") == (CONTROL_TOKEN)
        assert CONTROL_TOKEN not in await page.evaluate("location.href")
        assert await page.evaluate("document.getElementById('token').value") == ""
        await page.wait_for(f"{visible} >= 4", True)  # pause x3, gemini's "answered"
        await page.evaluate(
            "document.getElementById('pause-reason').value = 'deploying the new model';"
            "document.querySelector('tr[data-agent=\"codex\"] button[data-action=pause]')"
            ".click()"
        )
        await page.wait_for(state.format("codex"), "paused")
        await page.wait_for(
            f"{waiting}.includes('codex is paused (paused by http 127.0.0.1: deploying "
            "the new model)')",
            True,
        )
        # what was seen, for a person to look at
        height = await page.evaluate("document.documentElement.scrollHeight")
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=int(height),
            deviceScaleFactor=1,
            mobile=False,
        )
        await asyncio.sleep(0.3)
        shot = await page.call("Page.captureScreenshot", format="png")
        (setup.path / "status-page.png").write_bytes(base64.b64decode(shot["data"]))
        await page.evaluate(
            "const w = document.getElementById('window'); w.value = '5';"
            "w.dispatchEvent(new Event('change'))"
        )
        ticks = "[...document.querySelectorAll('#timeline .axis text')].map((t) => t.textContent)"
        await page.wait_for(f"{ticks}.length", 6)  # a line a minute, then "now"
        assert (await page.evaluate(ticks))[-1] == "now"
        await asyncio.sleep(2)  # the working run grows
        shot = await page.call("Page.captureScreenshot", format="png")
        (setup.path / "status-page-5m.png").write_bytes(base64.b64decode(shot["data"]))

        # The buttons: gemini answered by hand, codex resumed.
        await page.evaluate(
            "document.querySelector('#waiting li.needs-input button[data-action=resume]').click()"
        )
        await page.wait_for(state.format("gemini"), "idle")
        await page.evaluate(
            "document.querySelector('tr[data-agent=\"codex\"] button[data-action=resume]').click()"
        )
        await page.wait_for(state.format("codex"), "idle")
        html = await page.evaluate("document.documentElement.outerHTML")
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
        assert CONTROL_TOKEN not in html


def test_the_page_draws_the_runs_and_the_cost_per_day_and_controls_with_the_token(
    setup: Setup,
) -> None:
    """The timeline of the last hour (bars coloured by outcome, a working run growing, hover
    for batch, tokens and cost), the cost per day for 14 days, and pause, resume and
    "answered" through the control routes once the token is entered; a screenshot of it is
    left in the test's directory (status-page.png, and status-page-5m.png zoomed in)."""
    setup.agent_py.write_text(CHARTED_AGENT)
    (setup.path / "control.token").write_text(CONTROL_TOKEN)
    common = {"usage_patterns": [USAGE], "run_attempts": 1}
    setup.write_config(
        {
            "codex": {**common, "env": {"COST": "0.42", "SLEEP": "1.5"}},
            "claude": {
                **common,
                "event_kinds": ["pull-created"],
                "env": {"COST": "0.87", "SLEEP": "3"},
            },
            "gemini": {
                **common,
                "event_kinds": ["thread-created"],
                "needs_input_pattern": r"^NEEDS INPUT: (?P<question>.+)",
                "env": {"COST": "0.15", "SLEEP": "1"},
            },
        },
        tail=["--follow"],
        prompt="{% for e in events %}{{ e.id }}:{{ e.summary.thread_title }} {% endfor %}",
        http="127.0.0.1:0",
        http_token_file="control.token",
    )
    spent_before(
        setup.path / ".ghit-work",
        {
            "codex": [1.2, 2.5, 0.8, 3.1, 1.9, 0.4, 2.2, 2.8, 1.1, 0.6, 1.7, 2.4, 0.9],
            "claude": [0.7, 1.4, 2.9, 0.5, 1.2, 2.1, 0.3, 1.5, 2.6, 1.8, 0.9, 0.4, 1.3],
        },
    )
    with Running(setup.path) as daemon:
        daemon.wait_for("tail-events: started")
        write_events(
            setup.events,
            [
                event(1, title="ok"),
                event(2, kind="pull-created", title="review"),
                event(3, "thread-created", title="ask"),
            ],
        )
        daemon.wait_for("agent codex: working -> idle, exit 0")
        write_events(setup.events, [event(4, title="fail")])
        daemon.wait_for("dead letter 1 (1 event")
        write_events(setup.events, [event(5, title="ok again")])
        daemon.wait_for("agent claude: working -> idle, exit 0")
        write_events(setup.events, [event(6, kind="pull-created", title="slow")])
        daemon.wait_for("agent codex: working -> idle, exit 0", count=2)
        in_chromium(daemon, watch_charts, setup)
        text = daemon.wait_for("agent codex: resume over HTTP from 127.0.0.1: resumed")
        assert "agent codex: pause over HTTP from 127.0.0.1: paused: deploying the new model" in (
            text
        )
        assert "agent gemini: resume over HTTP from 127.0.0.1: woke (no thread)" in text
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    shot = setup.path / "status-page.png"
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
