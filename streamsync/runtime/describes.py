"""The objects' describes at start-up: fetched (outages waited out), checked, then used to
compile the mappings with Salesforce's own field types. Nothing is compiled on guessed types."""

from __future__ import annotations

import asyncio
from typing import Any

from streamsync.adapters.salesforce import SalesforceClient
from streamsync.config import Config
from streamsync.core.mapping import CompiledMapping
from streamsync.errors import ConfigError, SalesforceError, describe_error
from streamsync.logs import get_logger
from streamsync.retry import Policy
from streamsync.runtime.mappings import check_describe, compile_mappings, objects_to_describe

log = get_logger(__name__)

BACKOFF_MAX_S = 60.0
BOUNDED_ATTEMPTS = 6  # without a stop event: about half a minute of retries, then give up

Describes = dict[str, dict[str, Any]]


async def fetch_describes(config: Config, salesforce: SalesforceClient) -> Describes:
    """Describe every object the checks need, following relationships until none is missing.

    An object Salesforce does not know (404) is left out: the check then names the config key
    that refers to it. Any other failure is raised.
    """
    describes: Describes = {}
    tried: set[str] = set()
    while True:
        wanted = sorted(objects_to_describe(config, describes) - tried)
        if not wanted:
            return describes
        for name in wanted:
            tried.add(name)
            try:
                describes[name] = await salesforce.describe(name)
            except SalesforceError as exc:
                if exc.status != 404:
                    raise
                log.info("describe.missing", object=name)


def _unavailable(error: Exception) -> None:
    log.warning("salesforce.describe_unavailable", **describe_error(error))


def refuse_on_problems(config: Config, describes: Describes) -> None:
    """ConfigError naming every mapped field, relationship, filter field or fan-out that the
    describes contradict (what check-config reports), so a run never starts on them."""
    problems = check_describe(config, describes)
    if problems:
        raise ConfigError("refusing to start: the configuration does not match Salesforce: "
                          + "; ".join(str(p) for p in problems))


async def startup_describes(
    config: Config,
    salesforce: SalesforceClient,
    *,
    stop: asyncio.Event | None = None,
) -> Describes:
    """The describes every mapping and event rule needs, fetched now and checked.

    Transient failures (network, 5xx, rate limits) are retried with backoff: with `stop`, until
    it is set (Stopped then), so a service waits out an outage at start; without it,
    BOUNDED_ATTEMPTS times, then the last error is raised. A definitive mismatch (a mapped
    field that does not exist) raises ConfigError at once; a refused login raises AuthError.
    """
    policy = Policy(name="describes", attempts=None if stop is not None else BOUNDED_ATTEMPTS,
                    timeout_s=None, wait_initial_s=1.0, wait_max_s=BACKOFF_MAX_S,
                    on_retry=_unavailable)
    describes = await policy.call(lambda: fetch_describes(config, salesforce), stop)
    refuse_on_problems(config, describes)
    return describes


async def startup_mappings(
    config: Config,
    salesforce: SalesforceClient,
    *,
    stop: asyncio.Event | None = None,
) -> dict[str, CompiledMapping]:
    """The compiled mappings, from describes fetched now (see `startup_describes`)."""
    return compile_mappings(config, await startup_describes(config, salesforce, stop=stop))
