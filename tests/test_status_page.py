"""The status page in a real browser: headless Chromium, driven through the DevTools protocol,
sees an agent's state change without a reload."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
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
    )
    port_file = profile / "DevToolsActivePort"
    text = poll(lambda: port_file.exists() and port_file.read_text(), 30, "Chromium's port")
    return process, int(str(text).split()[0])


async def watch_page(debug_port: int, url: str, setup: Setup) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{debug_port}/json/list") as answer:
            targets = await answer.json()
        target = next(t for t in targets if t["type"] == "page")
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            await page.call("Page.enable")
            await page.call("Page.navigate", url=url)
            state = "document.querySelector('tr[data-agent=\"a\"] .state')?.textContent ?? null"
            await page.wait_for(state, "idle")
            await page.evaluate("window.loadedOnce = 'yes'")  # gone if the page reloads
            assert await page.evaluate("document.getElementById('health').textContent") == (
                "healthy"
            )
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


def test_the_status_page_shows_a_state_change_without_a_reload(setup: Setup) -> None:
    setup.write_config(
        {"a": {"env": {"RECORD": str(setup.records), "SLEEP": "2"}}},
        tail=["--follow"],
        http="127.0.0.1:0",
    )
    with Running(setup.path) as daemon:
        text = daemon.wait_for("http: serving on ")
        found = re.search(r"serving on (http://\S+) ", text)
        assert found
        with tempfile.TemporaryDirectory() as profile:
            browser, port = start_chromium(Path(profile))
            try:
                asyncio.run(watch_page(port, found.group(1) + "/", setup))
            finally:
                os.killpg(browser.pid, signal.SIGKILL)
                browser.wait()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
