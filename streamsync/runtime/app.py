"""Wiring of the service: builds every adapter from the config and runs ingest, flushers and health.

`open_components` (runtime/components.py, re-exported here) is the one place that turns a `Config`
into live clients (the `run`, `backfill`, `replay` and `check-config` commands share it); `Service`
runs the long-lived tasks and owns shutdown (runtime/supervise.py): on SIGTERM it stops taking
events, lets in-flight batches finish or releases them before a deadline, closes everything and
returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from streamsync.adapters.cometd import CometdSubscriber
from streamsync.adapters.iterable import API as ITERABLE_API
from streamsync.adapters.iterable import BULK_UPDATE
from streamsync.adapters.store import StoreAPI
from streamsync.config import Config
from streamsync.errors import (
    ConfigError,
    FatalError,
    RetriableError,
    Stopped,
    describe_error,
)
from streamsync.logs import get_logger
from streamsync.retry import Policy
from streamsync.runtime.clients import salesforce_session
from streamsync.runtime.components import Components as Components
from streamsync.runtime.components import open_components as open_components
from streamsync.runtime.consent_inbound import consent_inbound_tasks, consent_roles
from streamsync.runtime.event_worker import EventWorker, event_tasks
from streamsync.runtime.fence import Fence
from streamsync.runtime.flusher import Flusher
from streamsync.runtime.health import HealthServer, LoopMonitor, Readiness
from streamsync.runtime.ingest import Ingest, ReplayCallbacks, ingest_channels
from streamsync.runtime.ingest_parts import ChangeRelevance
from streamsync.runtime.leadership import Leadership
from streamsync.runtime.lists.start import start_lists
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.notify import SystemdNotifier
from streamsync.runtime.reconcile import Reconciler
from streamsync.runtime.reload import open_resync_and_reload, request_reload
from streamsync.runtime.statuspage.data import PageData
from streamsync.runtime.store_open import hold_store, open_store
from streamsync.runtime.subscriptions import Subscriptions
from streamsync.runtime.supervise import report_failure, supervise
from streamsync.runtime.wakeup import QueueSignal

log = get_logger(__name__)

METRICS_REFRESH_S = 5.0
STARTUP_BACKOFF_MAX_S = 60.0



class Service:
    """The long-running sync: ingest → queue → flushers → Iterable, plus health and metrics."""

    def __init__(
        self,
        config: Config,
        *,
        notifier: SystemdNotifier | None = None,
        clock: Callable[[], float] = time.time,
        shutdown_s: float = 30.0,
        owner: str = "service",
        metrics_refresh_s: float = METRICS_REFRESH_S,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.reload_asked = asyncio.Event()  # SIGHUP (runtime/reload.py)
        self.notifier = notifier or SystemdNotifier(None)
        self.clock = clock
        self.shutdown_s = shutdown_s
        self.owner = owner
        self.metrics_refresh_s = metrics_refresh_s
        self.metrics = Metrics()
        self.loop_monitor = LoopMonitor()
        self.health: HealthServer | None = None
        self.subscriptions: Subscriptions | None = None
        self.leadership: Leadership | None = None
        self.flusher: Flusher | None = None
        self.events: EventWorker | None = None
        self.queue_depth = 0
        self.last_write_ok = True
        self.store_problem: str | None = None
        self.page = PageData(config, self.metrics, self.readiness, clock)

    @property
    def ingest(self) -> Ingest | None:
        """The ingest of the channels this worker leads (None while following or starting)."""
        return self.subscriptions.current if self.subscriptions is not None else None

    def following(self) -> bool:
        """True once this worker has joined and leads no channel (another one subscribes)."""
        return self.subscriptions is not None and self.subscriptions.following

    def readiness(self) -> Readiness:
        """Ready once subscribed (or following another worker), while the store file is the
        one opened, while neither Salesforce nor Iterable is down (the flusher's circuit
        breakers) and while Iterable writes succeed (or nothing is pending)."""
        if self.store_problem is not None:
            return Readiness(False, self.store_problem)
        outage = self.flusher.outage() if self.flusher is not None else ""
        if outage:
            return Readiness(False, outage)
        if not self.following() and (self.ingest is None or not self.ingest.subscribed):
            return Readiness(False, "not subscribed to Salesforce change events")
        if not self.last_write_ok and self.queue_depth > 0:
            return Readiness(False, "the last Iterable write failed and records are pending")
        return Readiness(True)

    def _on_call(self, api: str, endpoint: str, status: str) -> None:
        if api == ITERABLE_API and endpoint == BULK_UPDATE:
            self.last_write_ok = status == "200"

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set; return the exit code. Holds a SQLite store for the whole run
        (a second `run` raises StoreBusy naming this one); several join a PostgreSQL store."""
        with hold_store(self.config, now=self.clock()):
            return await self._run_owned(stop)

    async def _run_owned(self, stop: asyncio.Event) -> int:
        health = await self._start_health()
        opened = False
        try:
            async with open_components(self.config, metrics=self.metrics, clock=self.clock,
                                       stop=stop) as parts:
                opened = True
                self.page.attach(parts.store, parts.limiter)
                reclaimed = 0 if parts.store.shared else await parts.store.expire_leases(
                    self.clock())  # a SQLite store's only owner: leases left are a dead run's
                if reclaimed:
                    log.warning("store.leases_reclaimed", records=reclaimed,
                                detail="leased by a run that ended without settling them")
                parts.counter.subscribe(self._on_call)
                try:
                    instance_url = await self._wait_for_salesforce(parts, stop)
                    if instance_url is None:
                        return 0
                    await check_iterable_key(parts)
                except FatalError as exc:
                    await report_failure(parts.store, "startup", exc, self.clock)
                    return 1
                return await self._run_tasks(parts, instance_url, stop)
        except Stopped:
            return 0
        except FatalError as exc:
            if opened:
                raise
            # Refused while describing the objects at start-up (login, permissions).
            store = await open_store(self.config)
            try:
                await report_failure(store, "startup", exc, self.clock)
            finally:
                await store.close()
            return 1
        finally:
            self.page.attach(None, None)
            if health is not None:
                await health.stop()

    async def _start_health(self) -> HealthServer | None:
        conf = self.config.health
        if not conf.enabled:
            return None
        self.health = HealthServer(self.metrics, self.readiness, self.loop_monitor,
                                   page=self.page.read)
        try:
            port = await self.health.start(conf.host, conf.port)
        except OSError as exc:
            await self.health.stop()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(f"health.port = {conf.port}: cannot listen on {conf.host}:"
                              f"{conf.port}: {reason}") from None
        log.info("health.listening", host=conf.host, port=port)
        return self.health

    async def _wait_for_salesforce(self, parts: Components, stop: asyncio.Event) -> str | None:
        """Authenticate, retrying transient failures; None if asked to stop meanwhile."""
        policy = Policy(name="salesforce_auth", attempts=None, timeout_s=None, wait_initial_s=1.0,
                        wait_max_s=STARTUP_BACKOFF_MAX_S, on_retry=_salesforce_unreachable)
        try:
            return await policy.call(parts.auth.instance_url, stop)
        except Stopped:
            return None

    async def _run_tasks(self, parts: Components, instance_url: str, stop: asyncio.Event) -> int:
        config = self.config
        try:
            lists = await start_lists(config, parts, stop=stop)
        except Stopped:
            return 0
        signal = QueueSignal()  # every enqueue in this process wakes the flusher at once
        reconciler = Reconciler(
            config=config, store=parts.store, salesforce=parts.salesforce, metrics=self.metrics,
            clock=self.clock, signal=signal,
        )
        ingest_http = salesforce_session(config, timeout_s=config.salesforce.timeout_s + 120,
                                         cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.leadership = leadership = Leadership(
            store=parts.store, channels=ingest_channels(config), config=config.workers,
            exclusive=not parts.store.shared, metrics=self.metrics, clock=self.clock,
            roles=consent_roles(config))
        self.subscriptions = Subscriptions(leadership, IngestBuilder(
            config=config, parts=parts, http=ingest_http, instance_url=instance_url,
            reconciler=reconciler, metrics=self.metrics, clock=self.clock, signal=signal,
            fence=leadership.token))
        self.flusher = Flusher(
            config=config, store=parts.store, salesforce=parts.salesforce,
            pipeline=parts.pipeline, metrics=self.metrics, clock=self.clock, signal=signal,
            owner=leadership.worker_id if parts.store.shared else self.owner, lists=lists,
            leads=leadership if parts.store.shared else None,
        )
        resyncer, reloader = await open_resync_and_reload(
            parts, self.config_path, self.metrics, requested=self.reload_asked,
            holders=[self, parts, parts.pipeline, self.flusher, self.page], leads=leadership)
        try:
            await leadership.start()
        except BaseException:
            await ingest_http.close()
            raise
        work = [
            asyncio.create_task(self.subscriptions.run(stop), name="ingest"),
            asyncio.create_task(leadership.run(stop), name="leadership"),
            asyncio.create_task(self.flusher.run(stop), name="flusher"),
            asyncio.create_task(resyncer.run(stop), name="resync"),
            *event_tasks(self, parts, signal, stop),
        ]
        if reloader is not None:
            work.append(asyncio.create_task(reloader.run(stop), name="reload"))
        work += consent_inbound_tasks(self, parts, stop)  # Iterable → Salesforce
        helpers = [
            asyncio.create_task(self.loop_monitor.run(), name="loop-monitor"),
            asyncio.create_task(self.notifier.run_watchdog(self.loop_monitor.alive), name="wd"),
            asyncio.create_task(self._refresh_metrics(parts, stop), name="metrics"),
            asyncio.create_task(self._announce_ready(stop), name="ready"),
        ]
        try:
            return await self._supervise(work, stop, parts.store)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await leadership.resign()
            await ingest_http.close()

    async def _supervise(self, work: list[asyncio.Task[None]], stop: asyncio.Event,
                         store: StoreAPI) -> int:
        """runtime/supervise.py `supervise`, with this service's notifier and deadline."""
        return await supervise(work, stop, store, notifier=self.notifier,
                               shutdown_s=self.shutdown_s, clock=self.clock)

    async def _announce_ready(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.ingest is not None and self.ingest.subscribed:
                self.notifier.ready(f"subscribed to {len(self.config.objects)} objects")
                log.info("service.ready")
                return
            if self.following():
                self.notifier.ready("following: another worker leads the subscriptions")
                log.info("service.ready", following=True)
                return
            await asyncio.sleep(0.2)

    async def _refresh_metrics(self, parts: Components, stop: asyncio.Event) -> None:
        """Queue depth, oldest age and dead letters from the store, every few seconds."""
        while not stop.is_set():
            self._check_store_file(parts.store)
            self.page.sample()
            self.metrics.subscribed.set(int(self.ingest is not None and self.ingest.subscribed))
            self.metrics.following.set(int(self.following()))
            with contextlib.suppress(RetriableError):
                stats = await parts.store.queue_stats(self.clock())
                self.queue_depth = stats.depth
                self.metrics.queue_depth.set(stats.depth)
                self.metrics.queue_oldest_age_s.set(stats.oldest_age_s or 0.0)
                self.metrics.set_dead_letters(await parts.store.dead_letter_counts())
                run = await parts.store.latest_run()
                self.metrics.set_backfill(
                    run, await parts.store.windows(run.run_id) if run is not None else [])
                usage = parts.counter.usage("salesforce")
                if usage is not None:
                    self.metrics.salesforce_api_usage.set(usage[0])
                    self.metrics.salesforce_api_limit.set(usage[1])
            await asyncio.sleep(self.metrics_refresh_s)


    def _check_store_file(self, store: StoreAPI) -> None:
        """A store file deleted or replaced under the service: not ready, and said once."""
        problem = store.file_problem()
        if problem is not None and self.store_problem is None:
            log.error("store.file_lost", path=store.location, error=problem)
        elif problem is None and self.store_problem is not None:
            log.info("store.file_back", path=store.location)
        self.store_problem = problem


@dataclass(frozen=True)
class IngestBuilder:
    """Builds the ingest (its own CometD subscriber) of the channels this worker leads."""

    config: Config
    parts: Components
    http: aiohttp.ClientSession
    instance_url: str
    reconciler: Reconciler
    metrics: Metrics
    clock: Callable[[], float]
    signal: QueueSignal
    fence: Fence

    def __call__(self, channels: list[str]) -> Ingest:
        config, parts = self.config, self.parts
        callbacks = ReplayCallbacks(parts.store)
        subscriber = CometdSubscriber(
            self.http,
            instance_url=self.instance_url,
            api_version=config.salesforce.api_version,
            get_token=parts.auth.access_token,
            invalidate_token=parts.auth.invalidate,
            channels=channels,
            replay_from=callbacks.replay_from,
            on_replay_invalid=callbacks.on_replay_invalid,
            watchdog_s=config.ingest.watchdog_s,
            long_poll_timeout_s=config.ingest.long_poll_timeout_s,
            idle_resubscribe_s=config.ingest.idle_resubscribe_s,
            counter=parts.counter,
        )
        return Ingest(
            config=config, store=parts.store, subscriber=subscriber, reconciler=self.reconciler,
            metrics=self.metrics, clock=self.clock, callbacks=callbacks, signal=self.signal,
            channels=channels, fence=self.fence, consent_fast=parts.pipeline.consent_fast,
            relevance=ChangeRelevance(parts.pipeline, parts.describes), gate=parts.pipeline.gate,
        )


async def check_iterable_key(parts: Components) -> None:
    """One getFields call: a refused key (FatalError) stops the start at once; an
    unreachable Iterable does not (changes queue up until it is back)."""
    try:
        await parts.iterable.get_fields()
    except RetriableError as exc:
        log.warning("iterable.unreachable_at_start", **describe_error(exc))


def _salesforce_unreachable(error: Exception) -> None:
    log.warning("salesforce.unreachable", **describe_error(error))


def install_signal_handlers(stop: asyncio.Event, service: Service | None = None) -> None:
    """SIGTERM and SIGINT set `stop`; a second signal is left to the default handler. SIGHUP
    asks `service` to reload its config file (runtime/reload.py)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if service is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: request_reload(service.reload_asked,
                                                                 service.config_path))


def run_service(
    config: Config,
    *,
    notify_socket: str | None = None,
    watchdog_usec: int | None = None,
    config_path: Path | None = None,
) -> int:
    """Entry point of `streamsync run`: one uvloop event loop until SIGTERM; SIGHUP reloads
    `config_path`."""

    async def main() -> int:
        stop = asyncio.Event()
        service = Service(config, notifier=SystemdNotifier(notify_socket, watchdog_usec),
                          config_path=config_path)
        install_signal_handlers(stop, service)
        return await service.run(stop)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(main())
    return uvloop.run(main())
