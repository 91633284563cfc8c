"""The metrics the dashboard and alerts rely on: each Iterable 429 counted once, Salesforce calls
by status, latency buckets, dead-letter and backfill gauges, and the Salesforce allocation taken
from `Sforce-Limit-Info` end to end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamsync.adapters.store import BackfillWindow, QueueInput, Store
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import TransientError
from streamsync.runtime.app import Service, open_components
from streamsync.runtime.flusher import Flusher
from streamsync.runtime.metrics import LATENCY_BUCKETS_S, Metrics
from tests.conftest import MakeConfig

BULK = "/api/users/bulkUpdate"


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return value


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_each_iterable_429_is_counted_once(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    make_config: MakeConfig,
) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path)
    metrics = Metrics()
    iterable_emulator.faults.fail_next(BULK, times=2, status=429, headers={"Retry-After": "0"})
    async with open_components(config, metrics=metrics) as parts:
        ids = sf_emulator.select_ids("Contact", "Email != null", limit=2)
        await parts.store.enqueue([QueueInput("Contact", i) for i in ids], time.time(), "cdc")
        flusher = Flusher(config=config, store=parts.store, salesforce=parts.salesforce,
                          pipeline=parts.pipeline, metrics=metrics, owner="test")
        result = await flusher.flush_once()
    assert result.synced == 2
    replies_429 = iterable_emulator.state.count(f"POST {BULK}", 429)
    assert replies_429 == 2
    assert _value(metrics, "streamsync_iterable_requests_total",
                  endpoint="bulkUpdate", status="429") == 2
    assert _value(metrics, "streamsync_iterable_rate_limited_total") == replies_429


async def test_salesforce_calls_are_counted_by_kind_and_status(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    make_config: MakeConfig,
) -> None:
    config = make_config(sf_emulator, iterable_emulator, tmp_path)
    metrics = Metrics()
    sf_emulator.faults.fail_next(f"/services/data/v{config.salesforce.api_version}/query",
                                 1, status=503)
    async with open_components(config, metrics=metrics) as parts:
        with pytest.raises(TransientError):
            [p async for p in parts.salesforce.query("SELECT Id FROM Contact LIMIT 1")]
        pages = [p async for p in parts.salesforce.query("SELECT Id FROM Contact LIMIT 1")]
    assert pages and pages[0].records
    text = metrics.render().decode()
    samples = _samples(text)
    statuses = {dict(labels)["status"]: value for (name, labels), value in samples.items()
                if name == "streamsync_salesforce_api_calls_total"
                and dict(labels)["kind"] == "query"}
    assert statuses == {"503": 1.0, "200": 1.0}


def test_latency_buckets_resolve_50ms_up_to_30_minutes() -> None:
    assert LATENCY_BUCKETS_S[0] == 0.05
    assert LATENCY_BUCKETS_S[-1] >= 1800.0
    assert list(LATENCY_BUCKETS_S) == sorted(set(LATENCY_BUCKETS_S))
    # no bucket more than 2.5x its neighbour: quantiles stay within a factor of the truth
    assert max(b / a for a, b in zip(LATENCY_BUCKETS_S, LATENCY_BUCKETS_S[1:], strict=False)) \
        <= 2.5
    metrics = Metrics()
    for seconds in (0.03, 0.04, 0.07, 95.0):
        metrics.commit_to_iterable_s.observe(seconds)
    assert _value(metrics, "streamsync_commit_to_iterable_seconds_bucket", le="0.05") == 2
    assert _value(metrics, "streamsync_commit_to_iterable_seconds_bucket", le="120.0") == 4
    assert _value(metrics, "streamsync_commit_to_iterable_seconds_bucket", le="60.0") == 3


def test_a_dead_letter_reason_that_was_cleared_drops_to_zero() -> None:
    metrics = Metrics()
    metrics.set_dead_letters({"invalid_email": 3, "type_mismatch": 1})
    metrics.set_dead_letters({"type_mismatch": 2})
    assert _value(metrics, "streamsync_dead_letters", reason="invalid_email") == 0
    assert _value(metrics, "streamsync_dead_letters", reason="type_mismatch") == 2
    metrics.set_dead_letters({})
    assert _value(metrics, "streamsync_dead_letters", reason="type_mismatch") == 0


async def test_backfill_gauges_follow_the_latest_run_in_the_store(store: Store) -> None:
    metrics = Metrics()
    assert _value(metrics, "streamsync_backfill_windows", state="pending") == 0
    windows = [BackfillWindow("Contact", "2024-01-01", "2024-07-01"),
               BackfillWindow("Contact", "2024-07-01", "2025-01-01"),
               BackfillWindow("Lead", "", "")]
    now = time.time()
    await store.start_run("bf-1", windows, {"scope": {}}, now)
    await store.save_checkpoint("bf-1", windows[0], "003000000000001AAA", 120, now)
    await store.finish_window("bf-1", windows[1], now, records_done=80)
    run = await store.latest_run()
    assert run is not None
    metrics.set_backfill(run, await store.windows(run.run_id))
    assert _value(metrics, "streamsync_backfill_running") == 1
    assert _value(metrics, "streamsync_backfill_windows", state="done") == 1
    assert _value(metrics, "streamsync_backfill_windows", state="pending") == 2
    assert _value(metrics, "streamsync_backfill_records_done") == 200
    await store.finish_window("bf-1", windows[0], now, records_done=150)
    await store.finish_window("bf-1", windows[2], now, records_done=0)
    await store.finish_run("bf-1", now)
    run = await store.latest_run()
    assert run is not None
    metrics.set_backfill(run, await store.windows(run.run_id))
    assert _value(metrics, "streamsync_backfill_running") == 0
    assert _value(metrics, "streamsync_backfill_windows", state="done") == 3
    assert _value(metrics, "streamsync_backfill_windows", state="pending") == 0
    assert _value(metrics, "streamsync_backfill_records_done") == 230


async def _scrape(http: aiohttp.ClientSession, service: Service) -> dict[
        tuple[str, frozenset[tuple[str, str]]], float]:
    assert service.health is not None and service.health.port is not None
    async with http.get(f"http://127.0.0.1:{service.health.port}/metrics") as r:
        return _samples(await r.text())


async def _until(what: str, predicate: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {timeout_s} s")


@pytest.mark.salesforce(long_poll_s=1.0, daily_api_max=5000)
async def test_salesforce_allocation_gauges_follow_sforce_limit_info(
    sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
    make_config: MakeConfig,
) -> None:
    """The running service exports the used/max of the org's daily allocation exactly as the
    last `Sforce-Limit-Info` header said, and the used count moves after more REST calls."""
    config = make_config(sf_emulator, iterable_emulator, tmp_path,
                         health={"enabled": True, "port": 0},
                         ingest={"watchdog_s": 5.0, "long_poll_timeout_s": 3.0})
    sf_emulator.state.usage.used = 1234  # the org already spent part of its day
    service = Service(config, metrics_refresh_s=0.1, shutdown_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    http = aiohttp.ClientSession()
    usage, limit = "streamsync_salesforce_api_usage", "streamsync_salesforce_api_limit"
    try:
        async def ready() -> bool:
            if service.health is None or service.health.port is None:
                return False
            samples = await _scrape(http, service)
            return samples.get(("streamsync_subscribed", frozenset())) == 1.0

        await _until("subscribed", ready)
        contact_id = sf_emulator.select_ids("Contact", "Email != null", limit=1)[0]
        sf_emulator.state.update("Contact", contact_id, {"FirstName": "Allocation"})

        async def reported() -> bool:
            samples = await _scrape(http, service)
            return (samples.get((usage, frozenset()), 0.0) > 1234
                    and samples.get((limit, frozenset())) == 5000.0)

        await _until("allocation exported", reported)
        first = (await _scrape(http, service))[(usage, frozenset())]
        assert 1234 < first <= sf_emulator.state.usage.used
        calls_before = sf_emulator.state.usage.used
        for _ in range(3):
            other = sf_emulator.select_ids("Contact", "Email != null", limit=3)[-1]
            sf_emulator.state.update("Contact", other, {"Title": f"t{time.monotonic()}"})

        async def moved() -> bool:
            samples = await _scrape(http, service)
            return samples.get((usage, frozenset()), 0.0) > calls_before

        await _until("allocation moved after more calls", moved)
        final = await _scrape(http, service)
        assert final[(limit, frozenset())] == 5000.0
        assert final[(usage, frozenset())] <= sf_emulator.state.usage.used
    finally:
        await http.close()
        stop.set()
        code = await asyncio.wait_for(task, 15)
    assert code == 0
