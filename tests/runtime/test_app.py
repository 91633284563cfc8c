"""The wired service in-process: readiness, every named metric populated, graceful stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.app import Service
from tests.conftest import MakeConfig

EXPECTED_METRICS = (
    "streamsync_queue_depth",
    "streamsync_queue_oldest_age_seconds",
    "streamsync_commit_to_iterable_seconds_count",
    'streamsync_events_received_total{channel="/data/ContactChangeEvent"}',
    'streamsync_last_event_timestamp_seconds{channel="/data/ContactChangeEvent"}',
    'streamsync_records_synced_total{object="Contact"}',
    'streamsync_iterable_requests_total{endpoint="bulkUpdate",status="200"}',
    "streamsync_salesforce_api_calls_total",
    "streamsync_salesforce_api_usage",
    'streamsync_dead_letters{reason="invalid_email"}',
)


async def _until(predicate: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.mark.salesforce(long_poll_s=1.0)
async def test_service_is_ready_syncs_and_exposes_every_metric(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    make_config: MakeConfig,
) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         health={"enabled": True, "port": 0},
                         ingest={"watchdog_s": 5.0, "long_poll_timeout_s": 3.0})
    service = Service(config, metrics_refresh_s=0.1, shutdown_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    http = aiohttp.ClientSession()
    try:
        async def ready() -> bool:
            if service.health is None or service.health.port is None:
                return False
            async with http.get(f"http://127.0.0.1:{service.health.port}/readyz") as r:
                return r.status == 200

        await _until(ready)
        contact_id = sf_emulator.select_ids("Contact", "Email != null", limit=1)[0]
        sf_emulator.state.update("Contact", contact_id, {"FirstName": "Metric"})
        sf_emulator.state.create("Contact", {"LastName": "Bad", "Email": "bad@example.c0m"})
        record = sf_emulator.state.record("Contact", contact_id)
        assert record is not None
        email = record["Email"].lower()

        async def synced() -> bool:
            profile = iterable_emulator.state.snapshot().get(email)
            return bool(profile and profile["dataFields"].get("firstName") == "Metric")

        await _until(synced)

        async def scraped() -> bool:
            assert service.health is not None
            async with http.get(f"http://127.0.0.1:{service.health.port}/metrics") as r:
                text = await r.text()
            return all(name in text for name in EXPECTED_METRICS)

        await _until(scraped)
    finally:
        await http.close()
        stop.set()
        code = await asyncio.wait_for(task, 15)
    assert code == 0
    assert [host for host, _ in (service.health.bound if service.health else [])] == ["127.0.0.1"]


def _cometd_calls(text: str) -> dict[str, float]:
    """`streamsync_salesforce_api_calls_total` samples of CometD kinds, by kind (status 200)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('streamsync_salesforce_api_calls_total{kind="cometd/') \
                and 'status="200"' in line:
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = out.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.salesforce(long_poll_s=0.5)
async def test_cometd_calls_are_counted_under_their_own_kinds(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    make_config: MakeConfig,
) -> None:
    """The subscription's handshake, subscribe and long-poll connects reach /metrics, each
    under a `cometd/...` kind (so dashboards can keep them apart from REST calls)."""
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         health={"enabled": True, "port": 0},
                         ingest={"watchdog_s": 5.0, "long_poll_timeout_s": 3.0})
    service = Service(config, metrics_refresh_s=0.1, shutdown_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    http = aiohttp.ClientSession()
    seen: dict[str, float] = {}
    try:
        async def counted() -> bool:
            nonlocal seen
            if service.health is None or service.health.port is None:
                return False
            async with http.get(f"http://127.0.0.1:{service.health.port}/metrics") as r:
                seen = _cometd_calls(await r.text())
            return seen.get("cometd/connect", 0.0) >= 2

        await _until(counted)
    finally:
        await http.close()
        stop.set()
        code = await asyncio.wait_for(task, 15)
    assert code == 0
    assert 1 <= seen["cometd/handshake"] <= sf_emulator.counters()["cometd"]["handshakes"]
    assert seen["cometd/subscribe"] >= 1
    assert set(seen) <= {"cometd/handshake", "cometd/subscribe", "cometd/connect",
                         "cometd/disconnect"}
