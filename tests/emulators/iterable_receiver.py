"""A system-webhook receiver on loopback for the Iterable emulator tests."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web


class Receiver:
    """Collects webhook POSTs; answers the statuses in `script` first, then 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: list[int] = []
        self.hits = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = orjson.loads(await request.read())
        status = self.script.pop(0) if self.script else 200
        if status == 200:
            self.bodies.append(body)
            self.headers.append(dict(request.headers))
        return web.Response(status=status, text="ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, n: int, timeout_s: float = 10.0) -> None:
        """Until `n` bodies were accepted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.bodies) < n:
            if loop.time() > deadline:
                raise TimeoutError(f"{len(self.bodies)} of {n} webhook bodies arrived")
            await asyncio.sleep(0.01)
