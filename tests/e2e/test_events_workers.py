"""Custom events with two workers on one PostgreSQL store (docs/events.md §4): both run their
decide loops, and a rule with a condition still fires exactly once per qualifying change,
because one record's candidates are never leased by two workers at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamsync.adapters.store.postgres import PostgresStore
from streamsync.config import parse_config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.emulators.salesforce.actions import set_stage
from streamsync.runtime.app import Service
from tests.e2e.harness import InProcessService, backfill, wait_for
from tests.e2e.process import service_config_data

pytestmark = [
    pytest.mark.salesforce(long_poll_s=0.5, seed_accounts=3, seed_contacts=12, seed_leads=4,
                           seed_users=3, seed_queues=1, seed_opportunities=12),
    pytest.mark.timeout(90),
]

WON = {"name": "won", "object": "Opportunity", "trigger": "update",
       "changed_fields": ["StageName"], "condition": "StageName = 'Closed Won'",
       "event_name": "opportunityWon", "profile": "primary_contact_role",
       "mapping": {"Name": "dataFields.opportunityName"}}
# Won, lost, won again... each record's changes come in faster than one decide step: decided
# out of order by two workers, a later "won" would read the state "won" and not fire.
STAGES = ["Closed Won", "Prospecting", "Closed Won", "Qualification", "Closed Won"]


async def test_a_rule_with_a_condition_fires_once_per_qualifying_change_with_two_workers(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        pg_url: str) -> None:
    data = service_config_data(
        sf_emulator, iterable_emulator, tmp_path, store={"url": pg_url},
        workers={"lease_s": 3.0, "heartbeat_s": 1.0},
        # one candidate per lease and none taken ahead: the workers interleave
        event_delivery={"batch_ids": 1, "decide_ahead": 0})
    data["events"] = [WON]
    config = parse_config(data, {"STREAMSYNC_SF_CLIENT_SECRET": sf_emulator.client_secret,
                                 "STREAMSYNC_ITERABLE_API_KEY": iterable_emulator.api_key})
    await backfill(config)
    workers = [InProcessService(config), InProcessService(config)]
    opps = sf_emulator.select_ids("Opportunity", "IsClosed = false AND IsDeleted = false", 4)
    store = await PostgresStore.open(pg_url)
    try:
        await workers[0].start()  # it leads every channel; the other follows
        follower = workers[1]
        follower.service = Service(config, shutdown_s=10.0)
        follower.task = asyncio.create_task(follower.service.run(follower.stop_event))

        async def follower_up() -> bool:
            return follower.service is not None and follower.service.events is not None

        await wait_for(follower_up, 15.0, "the second worker's event loops")
        for opp in opps:  # one record's changes next to each other in arrival order
            for stage in STAGES:
                set_stage(sf_emulator.state, opp, stage)
        stored = iterable_emulator.messaging_for(iterable_emulator.state.project()).events

        def fired() -> dict[str, int]:
            out = dict.fromkeys(opps, 0)
            for event_id in stored.by_id:
                for opp in opps:
                    out[opp] += event_id.startswith(f"won-{opp}-")
            return out

        async def settled() -> bool:
            counts = await store.event_counts()
            return (sum(fired().values()) >= 3 * len(opps)
                    and not counts.get("new") and not counts.get("ready"))

        deciders = [w.service.events for w in workers
                    if w.service is not None and w.service.events is not None]
        assert len(deciders) == 2

        async def both_decide() -> bool:
            # Besides each worker's own loop: one decide step of each at the same time, as
            # when the candidates pile up faster than one worker decides them.
            await asyncio.gather(*(d.decide_once() for d in deciders))
            return await settled()

        await wait_for(both_decide, 20.0, "3 events per Opportunity", poll_s=0.0)
        await asyncio.sleep(1.0)  # a late duplicate would show up now
        assert fired() == dict.fromkeys(opps, 3)
        assert all(e.writes == 1 for e in stored.by_id.values())
        assert all(d.stats.decided > 0 for d in deciders), [d.stats for d in deciders]
    finally:
        for worker in workers:
            await worker.abandon()
        await store.close()
