"""The composition root: `open_components` is the one place that turns a `Config` into live
clients (the `run`, `backfill`, `replay` and `check-config` commands share it, through
runtime/app.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from streamsync.adapters.http import UsageCounter
from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.ratelimit import RateLimiter
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.adapters.salesforce_auth import SalesforceAuth
from streamsync.adapters.shared_ratelimit import SharedRateLimiter
from streamsync.adapters.store import DrawerKind, StoreAPI
from streamsync.config import Config
from streamsync.core.mapping import CompiledMapping
from streamsync.runtime.clients import (
    budget_key,
    build_iterable_client,
    build_salesforce_auth,
    build_salesforce_client,
    iterable_session,
    salesforce_session,
)
from streamsync.runtime.describes import refuse_on_problems, startup_describes
from streamsync.runtime.event_rules import CompiledRule, compile_rules
from streamsync.runtime.mapping_state import with_clears
from streamsync.runtime.mappings import compile_mappings
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.pipeline import SyncPipeline
from streamsync.runtime.store_open import open_store


@dataclass
class Components:
    """Every live client the sync needs, built once from the config."""

    config: Config
    store: StoreAPI
    metrics: Metrics
    counter: UsageCounter
    salesforce_http: aiohttp.ClientSession
    iterable_http: aiohttp.ClientSession
    auth: SalesforceAuth
    salesforce: SalesforceClient
    iterable: IterableClient
    limiter: RateLimiter
    mappings: dict[str, CompiledMapping]
    pipeline: SyncPipeline
    clock: Callable[[], float] = field(default=time.time)
    rules: list[CompiledRule] = field(default_factory=list)  # [[events]], compiled
    describes: dict[str, Any] = field(default_factory=dict)  # as fetched at start


def _count_calls(metrics: Metrics) -> Callable[[str, str, str], None]:
    """Feeds the adapters' call counter into the Prometheus metrics."""

    def listener(api: str, endpoint: str, status: str) -> None:
        if api == "iterable":
            metrics.iterable_requests.labels(endpoint=endpoint, status=status).inc()
            if status == "429":
                metrics.iterable_429s.inc()
        else:
            metrics.salesforce_calls.labels(kind=endpoint, status=status).inc()

    return listener


def shared_limiter(config: Config, store: StoreAPI, family: str, rate_per_s: float,
                   max_in_flight: int, drawer: DrawerKind = "service") -> SharedRateLimiter:
    """The limiter of one Iterable endpoint family, its slots drawn from the budget every
    process on `store` shares for that family (docs/design.md §10.1)."""
    return SharedRateLimiter(rate_per_s, booker=store, budget_key=budget_key(config, family),
                             kind=drawer, max_in_flight=max_in_flight)


@contextlib.asynccontextmanager
async def open_components(
    config: Config,
    *,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
    describes: dict[str, Any] | None = None,
    stop: asyncio.Event | None = None,
    drawer: DrawerKind = "service",
) -> AsyncIterator[Components]:
    """Open the store and the HTTP clients; close them all on exit, whatever happened.

    Iterable's bulkUpdate slots come from the budget every process on the store shares
    (`SharedRateLimiter`), drawn as a `drawer` (the service, or a backfill).

    The mappings are compiled with the field types of `describes`, or of describes fetched
    now (`startup_describes`: an outage is waited out until `stop`, a mapped field Salesforce
    does not have raises ConfigError).
    """
    metrics = metrics or Metrics()
    counter = UsageCounter()
    counter.subscribe(_count_calls(metrics))
    it_conf = config.iterable
    store = await open_store(config)
    sf_http = salesforce_session(config)
    it_http = iterable_session(config)
    limiter: SharedRateLimiter | None = None
    subscriptions: SharedRateLimiter | None = None
    try:
        auth = build_salesforce_auth(config, sf_http, counter, clock=clock)
        salesforce = build_salesforce_client(config, sf_http, counter=counter, auth=auth)
        limiter = shared_limiter(config, store, "bulkUpdate", it_conf.rate_limit_per_s,
                                 it_conf.max_in_flight, drawer)
        subscriptions = shared_limiter(config, store, "subscriptions",
                                       config.consent.rate_limit_per_s,
                                       config.consent.max_in_flight, drawer)
        iterable = build_iterable_client(config, it_http, counter, limiter=limiter,
                                         subscription_limiter=subscriptions)
        if describes is None:
            describes = await startup_describes(config, salesforce, stop=stop)
        else:
            refuse_on_problems(config, describes)
        mappings = compile_mappings(config, describes)
        # Targets a mapping change dropped stay cleared by every writer (runtime/mapping_state.py).
        mappings = await with_clears(store, config, mappings)
        pipeline = SyncPipeline(
            config=config, store=store, iterable=iterable, metrics=metrics,
            mappings=mappings, clock=clock,
        )
        yield Components(
            config=config, store=store, metrics=metrics, counter=counter,
            salesforce_http=sf_http, iterable_http=it_http, auth=auth, salesforce=salesforce,
            iterable=iterable, limiter=limiter, mappings=mappings, pipeline=pipeline, clock=clock,
            rules=compile_rules(config, describes), describes=describes,
        )
    finally:
        if limiter is not None:
            await limiter.close()
        if subscriptions is not None:
            await subscriptions.close()
        await sf_http.close()
        await it_http.close()
        await store.close()
