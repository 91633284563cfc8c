"""The lists' part of a start (service and backfill): resolve [lists] against Salesforce and
Iterable (creating missing lists where allowed) and build the `ListSync`."""

from __future__ import annotations

import asyncio

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.iterable_lists import IterableLists
from streamsync.adapters.ratelimit import RateLimiter
from streamsync.adapters.store import StoreAPI
from streamsync.config import Config
from streamsync.errors import describe_error
from streamsync.logs import get_logger
from streamsync.retry import Policy
from streamsync.runtime.components import Components, shared_limiter
from streamsync.runtime.lists.members import MemberReader
from streamsync.runtime.lists.resolve import Resolution, resolve_lists
from streamsync.runtime.lists.sync import ListSync

log = get_logger(__name__)

BACKOFF_MAX_S = 60.0
BOUNDED_ATTEMPTS = 6


def lists_client(config: Config, iterable: IterableClient,
                 store: StoreAPI | None = None) -> IterableLists:
    """The list endpoints on `iterable`, with their limiter from [lists]: its slots drawn from
    the budget every process on `store` shares (docs/design.md §10.1), or its own."""
    conf = config.lists
    if store is None:
        return IterableLists(iterable, RateLimiter(conf.rate_limit_per_s,
                                                   max_in_flight=conf.max_in_flight))
    return IterableLists(iterable, shared_limiter(config, store, "lists", conf.rate_limit_per_s,
                                                  conf.max_in_flight))


def _unavailable(error: Exception) -> None:
    log.warning("lists.resolve_unavailable", **describe_error(error))


async def resolved(config: Config, parts: Components, client: IterableLists, *,
                   create: bool, stop: asyncio.Event | None = None) -> Resolution:
    """`resolve_lists`, transient failures retried (until `stop`, or a few times)."""
    policy = Policy(name="lists_resolve", attempts=None if stop is not None else BOUNDED_ATTEMPTS,
                    timeout_s=None, wait_initial_s=1.0, wait_max_s=BACKOFF_MAX_S,
                    on_retry=_unavailable)
    return await policy.call(
        lambda: resolve_lists(config, parts.salesforce, client, create=create), stop)


async def start_lists(config: Config, parts: Components, *,
                      stop: asyncio.Event | None = None) -> ListSync | None:
    """The ListSync for [lists] (None when no Campaign is mapped); ConfigError naming every
    entry that does not resolve."""
    if not config.lists.enabled:
        return None
    client = lists_client(config, parts.iterable, parts.store)
    resolution = await resolved(config, parts, client, create=True, stop=stop)
    resolution.raise_on_problems()
    for mapped in resolution.lists:
        log.info("lists.mapped", campaign_id=mapped.campaign_id, campaign=mapped.campaign_name,
                 list_id=mapped.list_id, list=mapped.list_name)
    reader = MemberReader(config, parts.salesforce, resolution.lists)
    return ListSync(store=parts.store, reader=reader, lists=client, writer=parts.pipeline.writer,
                    max_subscribers=config.lists.max_subscribers, clock=parts.clock)
