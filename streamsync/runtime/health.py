"""Health, metrics and the status page over HTTP: /healthz, /readyz, /metrics, / and /status.json
(bound to 127.0.0.1 by default; the page is streamsync/runtime/statuspage/)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from streamsync.runtime.metrics import Metrics
from streamsync.runtime.statuspage.render import page_html, sections

CONTENT_TYPE_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
STATIC_FILES = {"page.js": "text/javascript", "page.css": "text/css"}
PageSource = Callable[[], Awaitable[dict[str, Any]]]


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every answer, errors included: no caching, no framing, nothing from elsewhere."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


@dataclass(frozen=True)
class Readiness:
    """Whether the service can do its job, and why not."""

    ready: bool
    reason: str = ""


class LoopMonitor:
    """Measures event-loop lag with a ticker; /healthz fails when the loop stalls."""

    def __init__(self, tick_s: float = 0.5, stall_s: float = 10.0) -> None:
        self.tick_s = tick_s
        self.stall_s = stall_s
        self.last_tick = time.monotonic()
        self.max_lag_s = 0.0

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            self.max_lag_s = max(self.max_lag_s, now - before - self.tick_s)
            self.last_tick = now

    def alive(self) -> bool:
        return time.monotonic() - self.last_tick < self.stall_s


class HealthServer:
    """The aiohttp app that answers probes and scrapes."""

    def __init__(
        self,
        metrics: Metrics,
        readiness: Callable[[], Readiness],
        loop_monitor: LoopMonitor | None = None,
        refresh: Callable[[], object] | None = None,
        page: PageSource | None = None,
    ) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.loop_monitor = loop_monitor or LoopMonitor()
        self.refresh = refresh
        self.page = page
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.bound: list[tuple[str, int]] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[security_headers])
        app.router.add_get("/", self._page)
        app.router.add_get("/status.json", self._status_json)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, _: web.Request) -> web.Response:
        if self.loop_monitor.alive():
            return web.json_response({"status": "ok", "loop_lag_s": self.loop_monitor.max_lag_s})
        return web.json_response({"status": "stalled"}, status=503)

    async def _readyz(self, _: web.Request) -> web.Response:
        state = self.readiness()
        body = {"ready": state.ready, "reason": state.reason}
        return web.json_response(body, status=200 if state.ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        if self.refresh is not None:
            result = self.refresh()
            if asyncio.iscoroutine(result):
                await result
        headers = {"Content-Type": CONTENT_TYPE_PROMETHEUS}
        return web.Response(body=self.metrics.render(), headers=headers)

    async def _page_data(self) -> dict[str, Any]:
        if self.page is None:
            raise web.HTTPNotFound(text="no status page on this server")
        return await self.page()

    async def _page(self, _: web.Request) -> web.Response:
        return web.Response(text=page_html(await self._page_data()), content_type="text/html")

    async def _status_json(self, request: web.Request) -> web.Response:
        data = await self._page_data()
        if request.query.get("html") == "1":
            data = {**data, "html": sections(data)}
        return web.json_response(data)

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        body = resources.files("streamsync.runtime.statuspage").joinpath("static", name)
        return web.Response(body=body.read_bytes(), content_type=STATIC_FILES[name],
                            charset="utf-8")

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on host:port (port 0 picks one); returns the bound port."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.bound = [tuple(s.getsockname()[:2]) for s in sockets]
        self.port = int(self.bound[0][1]) if self.bound else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
