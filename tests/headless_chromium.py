"""A real headless Chromium (Debian's `chromium`) driven over the DevTools protocol with aiohttp:
no driver binary whose version must match, no extra dependency. `make test` installs chromium
when it is missing (Makefile target `chromium`)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--remote-debugging-port=0", "--window-size=1000,1500")


def browser_binary() -> str:
    """The browser's path; FAILS the test (never skips) when there is none."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no headless browser: install Debian's chromium (`sudo apt-get install "
                "--no-install-recommends chromium`, or `sudo make chromium`)")


class Page:
    """One tab: navigate, evaluate JavaScript, take a screenshot."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            reply = await asyncio.wait_for(self.ws.receive_json(), 30)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    async def goto(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)
        await self.until(f"{url} loaded", "document.readyState === 'complete'")

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, what: str, expression: str, timeout_s: float = 20.0) -> float:
        """Wait until `expression` is truthy in the page; return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if await self.eval(expression):
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what}: not true after {timeout_s} s ({expression})")

    async def screenshot(self) -> bytes:
        """The whole page as PNG."""
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(shot["data"])


@asynccontextmanager
async def headless_page(profile: Path) -> AsyncIterator[Page]:
    """Start the browser with a fresh profile; yield its first tab; stop it."""
    proc = await asyncio.create_subprocess_exec(
        browser_binary(), *FLAGS, f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start (exit {proc.returncode})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json()
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with http.ws_connect(url, max_msg_size=0) as ws:
                yield Page(ws)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
