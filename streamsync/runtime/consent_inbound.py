"""Iterable → Salesforce consent as tasks of the service (`[consent_inbound]`): the webhook
receiver on its own bind, the export poller and the drain (docs/design.md §7). Both ways in
commit events to the store's inbox and wake the drain; the drain is the only writer.

With several workers on one store every worker runs a receiver (storing is idempotent by the
event's key), but the poller and the drain run only on the worker holding the "consent/inbound"
lease (runtime/leadership.py), and stop as soon as that lease is lost or runs out here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from streamsync.config import Config, ConsentInboundConfig
from streamsync.errors import ConfigError, LeadershipLost, RetriableError, Stopped, describe_error
from streamsync.logs import get_logger
from streamsync.retry import Policy
from streamsync.runtime.components import Components
from streamsync.runtime.consent_drain import ConsentDrain
from streamsync.runtime.consent_match import Target, load_targets
from streamsync.runtime.consent_poll import ExportPoller
from streamsync.runtime.consent_webhook import ConsentWebhook
from streamsync.runtime.leadership import Leadership

log = get_logger(__name__)

LEASE = "consent/inbound"
"""The leadership lease (a pseudo-channel) under which one worker polls and drains."""

CHECK_S = 0.5
"""How often the lease holder checks it still holds it (it stops at the first miss)."""


def consent_roles(config: Config) -> list[str]:
    """The leases `[consent_inbound]` adds to the worker's (runtime/app.py)."""
    return [] if config.consent_inbound is None else [LEASE]


def _inbound(config: Config) -> ConsentInboundConfig:
    if config.consent_inbound is None:
        raise ValueError("consent_inbound is not configured")
    return config.consent_inbound


class ConsentInbound:
    """Builds and runs the receiver, the poller and the drain of one service."""

    def __init__(self, config: Config, parts: Components, *,
                 clock: Callable[[], float] = time.time, leads: Leadership | None = None) -> None:
        conf = _inbound(config)
        self.config = config
        self.parts = parts
        self.clock = clock
        self.leads = leads  # None: this process alone polls and drains
        self.led_terms = 0  # times this worker took the lease and started polling/draining
        self.drain = ConsentDrain(targets=[], store=parts.store, salesforce=parts.salesforce,
                                  clock=clock, apply_subscribes=conf.apply_subscribes,
                                  retain_s=conf.retain_days * 86_400.0)
        self.webhook: ConsentWebhook | None = None
        self.poller: ExportPoller | None = None
        secret = config.secrets.iterable_webhook_secret
        if conf.webhook.enabled and secret is not None:
            self.webhook = ConsentWebhook(conf.webhook, secret.get_secret_value, parts.store,
                                          clock=clock, on_stored=self.drain.wake)
        if conf.poll.enabled:
            self.poller = ExportPoller(conf.poll, parts.store, parts.iterable, clock=clock,
                                       on_stored=self.drain.wake)

    async def start(self) -> None:
        """Bind the receiver (a port that cannot be bound refuses the start, naming it)."""
        if self.webhook is None:
            return
        conf = self.webhook.conf
        try:
            port = await self.webhook.start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(f"consent_inbound.webhook.port = {conf.port}: cannot listen on "
                              f"{conf.host}:{conf.port}: {reason}") from None
        log.info("consent.webhook_listening", host=conf.host, port=port, path=conf.path)

    async def stop(self) -> None:
        if self.webhook is not None:
            await self.webhook.stop()

    async def targets(self, stop: asyncio.Event) -> list[Target]:
        """The consent objects' groups; list names need Iterable, whose outage is waited out."""
        policy = Policy(attempts=None, timeout_s=None, wait_initial_s=1.0, wait_max_s=60.0,
                        name="consent_targets", on_retry=_iterable_unreachable)
        # A list name that names no single Iterable list is a ConfigError (UnknownList).
        return await policy.call(lambda: load_targets(self.config, self.parts.iterable), stop)

    async def run_drain(self, stop: asyncio.Event) -> None:
        try:
            self.drain.targets = await self.targets(stop)
        except Stopped:
            return
        await self.drain.run(stop)

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Bind the receiver and keep it up until `stop` (it serves on the loop), then close
        it. A port that cannot be bound ends this task with a ConfigError naming it, which
        stops the service."""
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()

    def _drain_and_poll(self, halt: asyncio.Event) -> list[asyncio.Task[None]]:
        out = [asyncio.create_task(self.run_drain(halt), name="consent-drain")]
        if self.poller is not None:
            out.append(asyncio.create_task(self.poller.run(halt), name="consent-poll"))
        return out

    async def run_led(self, stop: asyncio.Event) -> None:
        """The drain and the poller, only while this worker holds the lease (always when
        `leads` is None). An error ending either one ends this task with it."""
        while not stop.is_set():
            token = None if self.leads is None else self.leads.token(LEASE)
            if self.leads is not None and token is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), CHECK_S)
                continue
            self.led_terms += 1
            log.info("consent.inbound_leading", fence=token)
            halt = asyncio.Event()
            if self.poller is not None:
                self.poller.fence = None if token is None else (LEASE, token)
            work = self._drain_and_poll(halt)
            stopped = asyncio.ensure_future(stop.wait())
            try:
                while not stop.is_set() and not any(t.done() for t in work) and (
                        self.leads is None or self.leads.token(LEASE) == token):
                    await asyncio.wait([*work, stopped], timeout=CHECK_S,
                                       return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                halt.set()
                results = await asyncio.gather(*work, return_exceptions=True)
            for result in results:
                if isinstance(result, LeadershipLost) and self.leads is not None:
                    self.leads.lost(result.channel, result.token)  # fenced off: follow
                elif isinstance(result, BaseException):
                    raise result
            if not stop.is_set():
                log.warning("consent.inbound_following", fence=token,
                            detail="the consent/inbound lease is lost; another worker "
                                   "polls and drains")

    def tasks(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """The long-lived tasks: the receiver's lifetime, and the drain and the poller under
        the lease."""
        return [asyncio.create_task(self.serve_until(stop), name="consent-webhook"),
                asyncio.create_task(self.run_led(stop), name="consent-led")]


def _iterable_unreachable(error: Exception) -> None:
    if isinstance(error, RetriableError):
        log.warning("consent.iterable_unreachable", **describe_error(error))


_RUNNING: weakref.WeakKeyDictionary[object, ConsentInbound] = weakref.WeakKeyDictionary()


def inbound_of(service: object) -> ConsentInbound | None:
    """The Iterable → Salesforce direction a running service started, if any."""
    return _RUNNING.get(service)


class _Service(Protocol):
    clock: Callable[[], float]
    config: Config
    leadership: Leadership | None


def consent_inbound_tasks(service: _Service, parts: Components,
                                stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """For the service (runtime/app.py): nothing without `[consent_inbound]`; else bind the
    receiver and return the direction's tasks (`inbound_of(service)` finds it)."""
    if service.config.consent_inbound is None:
        return []
    inbound = _RUNNING[service] = ConsentInbound(service.config, parts, clock=service.clock,
                                                 leads=service.leadership)
    return inbound.tasks(stop)
