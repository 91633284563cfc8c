"""The service queues only the updates its profile sync can see (runtime/ingest_parts.py
`ChangeRelevance`, wired in runtime/app.py with the describes fetched at start): on both
emulators, an update of a field no mapping reads costs no queue row (so no Salesforce read),
while the updates that matter reach Iterable and the final state holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamsync.adapters.store import Store
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.conftest import build_config
from tests.e2e.harness import InProcessService, backfill, verify_final_state, wait_caught_up

pytestmark = [pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=2, seed_contacts=4,
                                     seed_leads=6),
              pytest.mark.timeout(90)]

FAST_INGEST = {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0}


def _leads(sf: SalesforceEmulator) -> list[str]:
    return sf.select_ids("Lead", "IsDeleted = false AND IsConverted = false AND Email != null")


async def test_unmapped_updates_are_not_read_and_mapped_ones_arrive(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    config = build_config(sf, it, tmp_path, ingest=FAST_INGEST)  # the default mappings
    await backfill(config)
    service = InProcessService(config)
    await service.start()
    store = await Store.open(config.queue.path)
    try:
        mapped = _leads(sf)[0]
        sf.state.mass_update("Lead", _leads(sf), {"Title": "Not in any mapping"})
        sf.state.update("Lead", mapped, {"FirstName": "Mapped", "Title": "Also changed"})
        await wait_caught_up(store, sf, config, 20.0)
        ingest = service.service.ingest if service.service is not None else None
        assert ingest is not None
        assert ingest.stats.ids_unread == len(_leads(sf))  # the mass update: no row
        assert ingest.stats.ids_queued >= 1                # the FirstName change: queued
    finally:
        assert await service.stop() == 0
        await store.close()
    it.flush()
    email = str((sf.state.record("Lead", mapped) or {})["Email"]).lower()
    assert it.state.snapshot()[email]["dataFields"]["firstName"] == "Mapped"
    state = await verify_final_state(config, it)
    assert state.ok, state.explain()
