"""System webhooks: each consent event POSTed to a configured URL, one event per request, with
retries, and faults that lose or duplicate deliveries (Iterable: "Delivery is not guaranteed").

Auth as the webhook settings allow: NoAuth (no header), Basic and OAuth2 send
`Authorization: <authType> <authToken>` (Basic without the prefix when `basic_prefix` is off),
plus any extra headers. A delivery that gets a non-2xx reply, a timeout or a connection error is
retried after `backoff_s`, doubling, up to `retries` times; later events are not held back, so
deliveries may arrive out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp

from .consent import CONSENT_EVENTS, ConsentEvent

AuthType = Literal["NoAuth", "Basic", "OAuth2"]
AUTH_TYPES: Final = ("NoAuth", "Basic", "OAuth2")


@dataclass
class WebhookSettings:
    """Where and how deliveries go."""

    url: str | None = None
    auth_type: AuthType = "NoAuth"
    auth_token: str = ""
    basic_prefix: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    events: tuple[str, ...] = CONSENT_EVENTS
    enabled: bool = True
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 10.0
    concurrency: int = 4
    webhook_id: int = 1

    def check(self) -> None:
        """Raise ValueError on settings that cannot work."""
        if self.auth_type not in AUTH_TYPES:
            raise ValueError(f"authType must be one of {AUTH_TYPES}, got {self.auth_type!r}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http(s), got {self.url!r}")
        if self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0 or self.concurrency < 1:
            raise ValueError("retries/backoff_s >= 0, timeout_s > 0 and concurrency >= 1 needed")
        unknown = [e for e in self.events if e not in CONSENT_EVENTS]
        if unknown:
            raise ValueError(f"unknown webhook events {unknown}; known: {list(CONSENT_EVENTS)}")

    def request_headers(self) -> dict[str, str]:
        """The headers of every delivery."""
        headers = {"Content-Type": "application/json", **self.headers}
        if self.auth_type == "OAuth2":
            headers["Authorization"] = f"OAuth2 {self.auth_token}"
        elif self.auth_type == "Basic":
            headers["Authorization"] = (
                f"Basic {self.auth_token}" if self.basic_prefix else self.auth_token
            )
        return headers

    def api_view(self) -> dict[str, Any]:
        """An element of GET /api/webhooks (`ApiWebhookResponse`)."""
        return {
            "id": self.webhook_id,
            "endpoint": self.url or "",
            "authType": self.auth_type,
            "enabled": self.enabled and self.url is not None,
            "blastSendEnabled": True,
            "triggeredSendEnabled": True,
        }


@dataclass
class Delivery:
    """One event on its way; `copy` > 1 for a duplicate."""

    no: int
    event: ConsentEvent
    copy: int = 1
    attempts: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = "pending"

    def record(self) -> dict[str, Any]:
        """A JSON-ready view for the control API."""
        return {
            "no": self.no,
            "seq": self.event.seq,
            "eventName": self.event.event_name,
            "email": self.event.email,
            "userId": self.event.user_id,
            "copy": self.copy,
            "attempts": list(self.attempts),
            "outcome": self.outcome,
        }


class WebhookSender:
    """Delivers consent events; faults: lose or duplicate the next N, or a random share."""

    def __init__(self, settings: WebhookSettings | None = None, seed: int = 0) -> None:
        self.settings = settings or WebhookSettings()
        self.settings.check()
        self.deliveries: list[Delivery] = []
        self.lose_next = 0
        self.duplicate_next = 0
        self.loss_rate = 0.0
        self.duplicate_rate = 0.0
        self._rng = random.Random(seed)
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._busy = 0
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the delivery workers (deliveries queued before start are kept)."""
        queued: asyncio.Queue[Delivery] = asyncio.Queue()
        while not self._queue.empty():
            queued.put_nowait(self._queue.get_nowait())
        self._queue = queued
        self._session = aiohttp.ClientSession()
        self._workers = [
            asyncio.create_task(self._work(), name=f"iterable-webhook-{i}")
            for i in range(self.settings.concurrency)
        ]

    async def stop(self) -> None:
        """Stop delivering; undelivered events stay `pending`."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Until nothing is queued, in flight or waiting for a retry."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queue.qsize() or self._busy or self._timers:
            if loop.time() > deadline:
                raise TimeoutError("webhook deliveries still pending")
            await asyncio.sleep(0.01)

    # -- faults --------------------------------------------------------------------------------

    def set_faults(
        self,
        lose_next: int | None = None,
        duplicate_next: int | None = None,
        loss_rate: float | None = None,
        duplicate_rate: float | None = None,
    ) -> None:
        """Arm delivery faults (counts are for the next events; rates for every event)."""
        for name, value in (("lose_next", lose_next), ("duplicate_next", duplicate_next)):
            if value is not None:
                if type(value) is not int or value < 0:
                    raise ValueError(f"{name} must be an integer >= 0")
                setattr(self, name, value)
        for name, rate in (("loss_rate", loss_rate), ("duplicate_rate", duplicate_rate)):
            if rate is not None:
                if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1")
                setattr(self, name, float(rate))

    def faults(self) -> dict[str, Any]:
        """The armed delivery faults."""
        return {
            "lose_next": self.lose_next,
            "duplicate_next": self.duplicate_next,
            "loss_rate": self.loss_rate,
            "duplicate_rate": self.duplicate_rate,
        }

    # -- delivery ------------------------------------------------------------------------------

    def on_event(self, event: ConsentEvent) -> None:
        """ConsentLog listener: queue the event (or lose/duplicate it, as armed)."""
        s = self.settings
        if s.url is None or not s.enabled or event.event_name not in s.events:
            return
        delivery = Delivery(len(self.deliveries) + 1, event)
        self.deliveries.append(delivery)
        if self.lose_next > 0 or (self.loss_rate and self._rng.random() < self.loss_rate):
            self.lose_next = max(0, self.lose_next - 1)
            delivery.outcome = "lost"
            return
        self._queue.put_nowait(delivery)
        if self.duplicate_next > 0 or (
            self.duplicate_rate and self._rng.random() < self.duplicate_rate
        ):
            self.duplicate_next = max(0, self.duplicate_next - 1)
            twin = Delivery(len(self.deliveries) + 1, event, copy=2)
            self.deliveries.append(twin)
            self._queue.put_nowait(twin)

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            self._busy += 1
            try:
                await self._attempt(delivery)
            finally:
                self._busy -= 1

    async def _attempt(self, delivery: Delivery) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        attempt: dict[str, Any] = {"at": loop.time()}
        delivery.attempts.append(attempt)
        ok = False
        if s.url is None or self._session is None:
            attempt["error"] = "no webhook url"
        else:
            try:
                async with self._session.post(
                    s.url,
                    json=delivery.event.webhook_body(),
                    headers=s.request_headers(),
                    timeout=aiohttp.ClientTimeout(total=s.timeout_s),
                ) as resp:
                    await resp.read()
                    attempt["status"] = resp.status
                    ok = 200 <= resp.status < 300
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                attempt["error"] = type(exc).__name__
        if ok:
            delivery.outcome = "delivered"
            return
        if len(delivery.attempts) > s.retries:
            delivery.outcome = "failed"
            return
        delay = s.backoff_s * 2 ** (len(delivery.attempts) - 1)
        timer: asyncio.TimerHandle | None = None

        def requeue() -> None:
            assert timer is not None
            self._timers.discard(timer)
            self._queue.put_nowait(delivery)

        timer = loop.call_later(delay, requeue)
        self._timers.add(timer)

    def counts(self) -> dict[str, int]:
        """Deliveries by outcome."""
        out: dict[str, int] = {}
        for d in self.deliveries:
            out[d.outcome] = out.get(d.outcome, 0) + 1
        return out
