"""The consent fast path end to end (issue 13 item 7; runtime/consent_fast.py): the service on
both emulators over loopback HTTP. A Salesforce opt-out reaches Iterable from its CDC event
while Salesforce answers no query at all, and once Salesforce answers again the pipeline syncs
the record without a second subscription call."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamsync.adapters.store import Store
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.conftest import build_config
from tests.e2e.harness import InProcessService, backfill, wait_caught_up, wait_for

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=1, seed_contacts=3, seed_leads=6,
                           seed_users=2, seed_queues=1),
    pytest.mark.timeout(60),
]

MARKETING_EMAIL = 39581
PUT_GROUP = "PUT /api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}"
QUERIES = "/services/data/v66.0/query"  # query and queryAll
FAST_INGEST = {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0}


async def test_an_opt_out_reaches_iterable_while_salesforce_answers_no_query(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    sf, it = sf_emulator, iterable_emulator
    config = build_config(sf, it, tmp_path, ingest=FAST_INGEST,
                          flush={"outage_probe_max_s": 0.5},
                          objects={"Lead": {"consent": {
                              "unsubscribe_channel_ids": [MARKETING_EMAIL]}}})
    await backfill(config)
    lead = sf.select_ids("Lead", "IsDeleted = false AND Email != null AND IsConverted = false "
                         "AND HasOptedOutOfEmail = false", 1)[0]
    record = sf.state.record("Lead", lead)
    assert record is not None
    email = str(record["Email"]).lower()
    service = InProcessService(config)
    await service.start()
    store = await Store.open(config.queue.path)
    try:
        await wait_caught_up(store, sf, config, 10.0)
        puts = it.state.writes()["calls"].get(PUT_GROUP, 0)
        queries = sf.state.usage.by_kind.get("query", 0)
        sf.faults.fail_next(QUERIES, 100_000, status=503)
        sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})

        async def unsubscribed() -> bool:
            it.flush()
            profile = it.project.by_email.get(email)
            assert profile is not None
            return MARKETING_EMAIL in profile.subscriptions().unsubscribed_channel_ids

        await wait_for(unsubscribed, 10.0, "the opt-out to reach Iterable with no read")
        assert sf.state.usage.by_kind.get("query", 0) == queries  # not one query answered
        assert it.state.writes()["calls"].get(PUT_GROUP, 0) == puts + 1
        assert (await store.queue_stats(0.0)).depth == 1  # the change is still queued
        sf.faults.clear()
        await wait_caught_up(store, sf, config, 15.0)
        service.assert_running()
        assert sf.state.usage.by_kind.get("query", 0) > queries  # the pipeline read it
        assert it.state.writes()["calls"].get(PUT_GROUP, 0) == puts + 1  # and wrote no more
        stored = (await store.consent_states("Lead", [lead]))[lead]
        assert (stored.opted_out, stored.origin) == (True, "salesforce")
    finally:
        await service.abandon()
        await store.close()
