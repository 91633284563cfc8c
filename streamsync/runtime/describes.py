"""The objects' describes at start-up: fetched (outages waited out), checked, then used to
compile the mappings with Salesforce's own field types. Nothing is compiled on guessed types."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from streamsync.adapters.salesforce import SalesforceClient, SalesforceError
from streamsync.config import Config
from streamsync.core.mapping import CompiledMapping
from streamsync.errors import ConfigError, RetriableError, StreamsyncError
from streamsync.logs import get_logger

log = get_logger(__name__)

BACKOFF_MAX_S = 60.0
BOUNDED_ATTEMPTS = 6  # without a stop event: about half a minute of retries, then give up

Describes = dict[str, dict[str, Any]]


class StartupStopped(StreamsyncError):
    """Asked to stop while waiting for Salesforce at start-up."""


async def fetch_describes(config: Config, salesforce: SalesforceClient) -> Describes:
    """Describe every object the checks need, following relationships until none is missing.

    An object Salesforce does not know (404) is left out: the check then names the config key
    that refers to it. Any other failure is raised.
    """
    describes: Describes = {}
    tried: set[str] = set()
    while True:
        wanted = sorted(config.objects_to_describe(describes) - tried)
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


def refuse_on_problems(config: Config, describes: Describes) -> None:
    """ConfigError naming every mapped field, relationship, filter field or fan-out that the
    describes contradict (what check-config reports), so a run never starts on them."""
    problems = config.check_describe(describes)
    if problems:
        raise ConfigError("refusing to start: the configuration does not match Salesforce: "
                          + "; ".join(str(p) for p in problems))


async def _pause(stop: asyncio.Event | None, delay_s: float,
                 sleep: Callable[[float], Awaitable[None]]) -> None:
    if stop is None:
        await sleep(delay_s)
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
    if stop.is_set():
        raise StartupStopped("stopped while waiting for Salesforce")


async def startup_mappings(
    config: Config,
    salesforce: SalesforceClient,
    *,
    stop: asyncio.Event | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, CompiledMapping]:
    """The compiled mappings, from describes fetched now.

    Transient failures (network, 5xx, rate limits) are retried with backoff: with `stop`, until
    it is set (StartupStopped then), so a service waits out an outage at start; without it,
    BOUNDED_ATTEMPTS times, then the last error is raised. A definitive mismatch (a mapped
    field that does not exist) raises ConfigError at once; a refused login raises AuthError.
    """
    delay_s = 1.0
    attempt = 0
    while True:
        try:
            describes = await fetch_describes(config, salesforce)
            break
        except RetriableError as exc:
            attempt += 1
            if stop is None and attempt >= BOUNDED_ATTEMPTS:
                raise
            log.warning("salesforce.describe_unavailable", error=str(exc), retry_in_s=delay_s)
            await _pause(stop, delay_s, sleep)
            delay_s = min(delay_s * 2, BACKOFF_MAX_S)
    refuse_on_problems(config, describes)
    return config.compiled(describes)
