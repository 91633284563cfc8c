"""The receiver of Iterable system webhooks (subscribe/unsubscribe events), on its own bind.

Each POST is checked in this order, and answered before anything else is read:
authentication (401), size (413), JSON and event shape (400). A subscription event is then
committed to the store's consent inbox and only then answered 200, so an event Iterable saw
acknowledged survives any crash; a store failure answers 503 and Iterable delivers it again.
A repeated delivery finds its dedupe key stored and is answered 200 without a second row.
Events that change no subscription (hostedUnsubscribeClick, sends, opens) are answered 200 and
dropped. README "Consent" shows how to point Iterable's webhook here.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from streamsync.adapters.store import StoreAPI
from streamsync.config import ConsentWebhookConfig
from streamsync.core.consent_inbound import InboundEvent, parse_webhook
from streamsync.errors import MalformedConsentEvent, StreamsyncError, describe_error
from streamsync.logs import get_logger
from streamsync.runtime.consent_rows import to_row
from streamsync.runtime.health import security_headers

log = get_logger(__name__)


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body),
                        content_type="application/json", headers=headers)


class ConsentWebhook:
    """The aiohttp server; `on_stored` is called after each newly committed event."""

    def __init__(self, conf: ConsentWebhookConfig, secret: Callable[[], str], store: StoreAPI, *,
                 clock: Callable[[], float], on_stored: Callable[[], None] = lambda: None
                 ) -> None:
        self.conf = conf
        self._secret = secret
        self.store = store
        self.clock = clock
        self.on_stored = on_stored
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.counts: dict[str, int] = {}

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def app(self) -> web.Application:
        # aiohttp refuses a body above client_max_size with 413 on its own too (chunked ones).
        app = web.Application(middlewares=[security_headers],
                              client_max_size=self.conf.max_body_bytes)
        app.router.add_post(self.conf.path, self._receive)
        return app

    def _presented(self, request: web.Request) -> str | None:
        if self.conf.auth == "header":
            return request.headers.get(self.conf.header)
        value = request.headers.get("Authorization")
        if value is None:
            return None
        scheme, _, token = value.strip().partition(" ")
        # Iterable's docs show the Basic token without its scheme word: accept both forms.
        return token.strip() if scheme.lower() == "basic" and token else value.strip()

    def authorized(self, request: web.Request) -> bool:
        """Constant-time comparison of the presented secret with ours."""
        presented = self._presented(request)
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self._secret().encode())

    async def _receive(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            self._count("unauthorized")
            challenge = ({"WWW-Authenticate": 'Basic realm="streamsync"'}
                         if self.conf.auth == "basic" else None)
            return _json({"error": "unauthorized"}, 401, challenge)
        length = request.content_length
        if length is not None and length > self.conf.max_body_bytes:
            self._count("too_large")
            return _json({"error": f"body over {self.conf.max_body_bytes} bytes"}, 413)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._count("too_large")
            return _json({"error": f"body over {self.conf.max_body_bytes} bytes"}, 413)
        try:
            event = parse_webhook(orjson.loads(raw))
        except orjson.JSONDecodeError:
            self._count("malformed")
            return _json({"error": "the body is not JSON"}, 400)
        except MalformedConsentEvent as exc:
            self._count("malformed")
            return _json({"error": exc.detail}, 400)
        if event is None:
            self._count("ignored")
            return _json({"status": "ignored"}, 200)
        return await self._store(event)

    async def _store(self, event: InboundEvent) -> web.Response:
        try:
            added = await self.store.add_consent_events([to_row(event)], "webhook", self.clock())
        except StreamsyncError as exc:
            self._count("store_failed")
            log.warning("consent.webhook_store_failed", **describe_error(exc))
            return _json({"error": "not stored, deliver again"}, 503)
        status = "stored" if added else "duplicate"
        self._count(status)
        log.info("consent.webhook_event", event_name=event.event_name, status=status,
                 source=event.source)
        if added:
            self.on_stored()
        return _json({"status": status}, 200)

    async def start(self) -> int:
        """Serve on the configured host and port (0 picks one); returns the bound port."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.conf.host, self.conf.port)
        try:
            await site.start()
        except OSError:
            await self.stop()
            raise
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.conf.port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
