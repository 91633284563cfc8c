"""A Retry-After of N seconds is honoured on every retried path: each path's real code against
the emulators, the reply carrying `Retry-After: 7`; the wait the path then schedules is at least
7 s (stamina's waits are recorded, not slept; CometD's next poll delay is read)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import pytest

from streamsync.adapters.cometd import CometdSubscriber
from streamsync.adapters.salesforce import SalesforceClient
from streamsync.config import Config
from streamsync.core.batching import BatchCutter
from streamsync.core.mapping import payload_hash
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import RetriableError
from streamsync.models import MappedUser
from streamsync.retry import Policy
from streamsync.runtime.app import Service
from streamsync.runtime.backfill.options import READS
from streamsync.runtime.clients import build_salesforce_auth
from streamsync.runtime.describes import startup_mappings
from streamsync.runtime.writer import IterableWriter
from tests.conftest import Clients

AFTER_S = 7.0
HEADERS = {"Retry-After": "7"}
DATA = "/services/data/v"

Path = Callable[[SalesforceEmulator, IterableEmulator, Config, Clients], Awaitable[None]]


async def salesforce_rest_query(sf: SalesforceEmulator, _: IterableEmulator, config: Config,
                                clients: Clients) -> None:
    sf.faults.fail_next(DATA, 1, status=503, headers=HEADERS, method="GET")
    client = SalesforceClient(clients.session, clients.auth, config.salesforce.api_version,
                              retry=Policy(attempts=2, timeout_s=60.0))
    async for _page in client.query("SELECT Id FROM Lead"):
        pass


async def salesforce_rate_limit(sf: SalesforceEmulator, _: IterableEmulator, config: Config,
                                clients: Clients) -> None:
    sf.faults.fail_next(DATA, 1, status=429, headers=HEADERS, method="GET",
                        body=[{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "slow"}])
    client = SalesforceClient(clients.session, clients.auth, config.salesforce.api_version,
                              retry=Policy(attempts=2, timeout_s=60.0))
    await client.describe("Lead")


async def startup_describes(sf: SalesforceEmulator, _: IterableEmulator, config: Config,
                            clients: Clients) -> None:
    await clients.auth.token()
    sf.faults.fail_next(DATA, 1, status=503, headers=HEADERS)
    await startup_mappings(config, clients.salesforce, stop=asyncio.Event())


async def startup_auth(sf: SalesforceEmulator, _: IterableEmulator, config: Config,
                       clients: Clients) -> None:
    sf.faults.fail_next("/services/oauth2/token", 1, status=429, headers=HEADERS)
    auth = build_salesforce_auth(config, clients.session)
    parts = SimpleNamespace(auth=auth)
    assert await Service(config)._wait_for_salesforce(parts, asyncio.Event()) is not None  # type: ignore[arg-type]


async def backfill_reads(sf: SalesforceEmulator, _: IterableEmulator, config: Config,
                         clients: Clients) -> None:
    await clients.auth.token()
    sf.faults.fail_next(DATA, 1, status=503, headers=HEADERS)
    await READS.call(lambda: clients.salesforce.describe("Contact"))


async def iterable_writes(_: SalesforceEmulator, it: IterableEmulator, config: Config,
                          clients: Clients) -> None:
    it.faults.fail_next("/api/users/bulkUpdate", times=1, status=429, headers=HEADERS)
    payload = {"email": "ra@example.com", "dataFields": {"n": 1}}
    cutter = BatchCutter()
    cutter.add(MappedUser("Contact", "003000000000001AAA", "ra@example.com", None, payload,
                          payload_hash(payload)))
    batch = cutter.flush()
    assert batch is not None
    writer = IterableWriter(clients.iterable, policy=Policy(attempts=2, timeout_s=60.0))
    out = await writer.write([batch])
    assert len(out.synced) == 1


PATHS: list[Path] = [salesforce_rest_query, salesforce_rate_limit, startup_describes,
                     startup_auth, backfill_reads, iterable_writes]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.__name__)
async def test_a_retry_after_is_waited_out(path: Path, sf_emulator: SalesforceEmulator,
                                           iterable_emulator: IterableEmulator, config: Config,
                                           clients: Clients, retry_waits: list[float]) -> None:
    await path(sf_emulator, iterable_emulator, config, clients)
    assert retry_waits, "the path did not retry"
    assert AFTER_S <= retry_waits[0] <= AFTER_S + 1.0  # the Retry-After, plus a little jitter


def _subscriber(sf: SalesforceEmulator, config: Config, clients: Clients) -> CometdSubscriber:
    async def token() -> str:
        return (await clients.auth.token()).access_token

    async def replay_from(_: str) -> None:
        return None

    async def on_invalid(_: str, __: object) -> None:
        return None

    return CometdSubscriber(
        clients.session, instance_url=sf.instance_url, api_version=config.salesforce.api_version,
        get_token=token, invalidate_token=lambda: None, channels=["/data/LeadChangeEvent"],
        replay_from=replay_from, on_replay_invalid=on_invalid, long_poll_timeout_s=2.0,
        min_handshake_interval_s=0.0)


@pytest.mark.parametrize("step", ["handshake", "connect"])
async def test_cometd_waits_out_a_retry_after(step: str, sf_emulator: SalesforceEmulator,
                                              config: Config, clients: Clients) -> None:
    sub = _subscriber(sf_emulator, config, clients)
    try:
        if step == "connect":
            await sub.poll_once()  # handshake and subscribe
        sf_emulator.faults.fail_next("/cometd/", 1, status=503, headers=HEADERS)
        with pytest.raises(RetriableError) as info:
            await sub.poll_once()
        assert info.value.retry_after_s == AFTER_S
        assert sub.next_poll_delay_s >= AFTER_S
    finally:
        await sub.close()
