"""Metrics fed by the wired components: each Iterable 429 is counted once."""

from __future__ import annotations

from streamsync.config import Config
from streamsync.core.soql import select_by_ids_chunked
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.app import open_components

BULK = "/api/users/bulkUpdate"


async def test_each_iterable_429_is_counted_once(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        config: Config) -> None:
    ids = sf_emulator.select_ids("Contact", "Email != null", limit=3)
    iterable_emulator.faults.fail_next(BULK, times=2, status=429,
                                       headers={"Retry-After": "0"})
    async with open_components(config) as parts:
        fields = parts.mappings["Contact"].soql_fields()
        records = []
        for soql in select_by_ids_chunked("Contact", fields, ids, "", None):
            records.extend([r async for r in parts.salesforce.records(soql)])
        outcome = await parts.pipeline.sync_records("Contact", records, source="flush")
        assert len(outcome.synced) == 3, outcome
        counted = parts.metrics.registry.get_sample_value(
            "streamsync_iterable_rate_limited_total")
    assert iterable_emulator.state.count(f"POST {BULK}", 429) == 2
    assert counted == 2.0
