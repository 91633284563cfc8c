"""An Iterable outage far longer than the retry budget (max_attempts × backoff), compressed in
time by config: the whole service in process on both emulators, the outage made through the
Iterable emulator's control API, /readyz and /metrics read over HTTP. Nothing is dead-lettered,
/readyz names the outage, the flushers stop re-reading Salesforce, and the backlog drains as soon
as Iterable answers again. (`scripts/chaos.py --outage-minutes 10` is the long version.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamsync.adapters.store import Store
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.conftest import build_config
from tests.e2e.harness import FinalStateChecker, InProcessService, backfill, wait_caught_up

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=3, seed_contacts=20, seed_leads=20),
    pytest.mark.timeout(90),
]

OUTAGE_S = 5.0
RETRY_BUDGET_S = 3 * 0.2  # max_attempts × backoff_max_s below: what today's main survives
PROBE_MAX_S = 0.5
CONFIG = {
    "queue": {"max_attempts": 3, "backoff_base_s": 0.05, "backoff_max_s": 0.2},
    "flush": {"outage_probe_max_s": PROBE_MAX_S},
    "health": {"enabled": True, "host": "127.0.0.1", "port": 0},
    "ingest": {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0},
}


class Probe:
    """GET /readyz and the queryAll counter of /metrics, over HTTP."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.url = f"http://127.0.0.1:{port}"

    async def ready(self) -> tuple[int, str]:
        async with self.http.get(f"{self.url}/readyz") as resp:
            body: dict[str, Any] = await resp.json()
            return resp.status, str(body.get("reason", ""))

    async def query_all_calls(self) -> float:
        async with self.http.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("streamsync_salesforce_api_calls_total{")
                   and 'kind="queryAll"' in line)


async def dead_letters(store: Store) -> set[tuple[str, str]]:
    return {(d.record_id, d.reason) for d in await store.dead_letters()}


@pytest.fixture
async def running(sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
                  tmp_path: Path) -> AsyncIterator[tuple[InProcessService, Store, Probe,
                                                         aiohttp.ClientSession]]:
    config = build_config(sf_emulator, iterable_emulator, tmp_path, **CONFIG)
    await backfill(config)
    service = InProcessService(config)
    await service.start()
    store = await Store.open(config.queue.path)
    try:
        async with aiohttp.ClientSession() as http:
            assert service.service is not None and service.service.health is not None
            port = service.service.health.port
            assert port is not None
            yield service, store, Probe(http, port), http
    finally:
        await service.abandon()
        await store.close()


async def test_an_iterable_outage_is_waited_out_and_the_backlog_drains_at_once(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        running: tuple[InProcessService, Store, Probe, aiohttp.ClientSession]) -> None:
    service, store, probe, http = running
    sf, it = sf_emulator, iterable_emulator
    config = service.config
    faults = f"{it.control_url}/faults"
    genuine = await dead_letters(store)  # seeded records without an email
    assert all(reason == "missing_email" for _, reason in genuine)
    async with http.post(faults, json={"kind": "status", "status": 503, "path": "*",
                                       "times": 10**9}) as resp:
        assert resp.status == 200
    down_at = time.monotonic()
    reads_before = await probe.query_all_calls()

    leads = sf.select_ids("Lead", "IsDeleted = false AND Email != null AND IsConverted = false")
    contacts = sf.select_ids("Contact", "IsDeleted = false AND Email != null")
    sf.state.mass_update("Lead", leads, {"FirstName": "Outage"})
    sf.state.mass_update("Contact", contacts, {"FirstName": "Outage"})
    sf.state.create("Lead", {"LastName": "DuringOutage", "Company": "Co",
                             "Email": "during.outage@example.com",
                             "Status": "Open - Not Contacted"})
    reasons = set()
    while time.monotonic() - down_at < OUTAGE_S:
        status, reason = await probe.ready()
        if status == 503:
            reasons.add(reason.split(" since ")[0])
        await asyncio.sleep(0.1)
    assert OUTAGE_S > 5 * RETRY_BUDGET_S

    assert await dead_letters(store) == genuine  # today's main: + retries_exhausted
    assert "Iterable unreachable" in reasons
    reads = await probe.query_all_calls() - reads_before
    # Before the breaker opens, then one probe batch (≤ 3 objects) per probe; never a re-read
    # of every queued record on every retry.
    assert reads <= 3 * (OUTAGE_S / PROBE_MAX_S + 8), reads
    backlog = (await store.queue_stats(time.time())).depth
    assert backlog >= len(leads) + len(contacts)

    async with http.delete(faults) as resp:
        assert resp.status == 200
    up_at = time.monotonic()
    await wait_caught_up(store, sf, config, timeout_s=20.0)
    drain_s = time.monotonic() - up_at
    # One probe away (≤ PROBE_MAX_S), then the backlog goes at the rate limit, not each record
    # after its own backoff.
    assert drain_s < PROBE_MAX_S + 5.0, drain_s
    assert await probe.ready() == (200, "")
    async with FinalStateChecker.open(config, it) as checker:
        state = await checker.assert_consistent(10.0)
    assert not state.unjustified_dead
    assert await dead_letters(store) == genuine
    it.flush()
    assert it.state.snapshot()["during.outage@example.com"]["dataFields"]["lastName"] == \
        "DuringOutage"
