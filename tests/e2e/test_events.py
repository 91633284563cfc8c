"""Custom events from CDC (issue 14 items 1, 2): the whole service on both emulators over real
loopback HTTP; events are read back through Iterable's event read endpoint."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamsync.adapters.iterable import IterableClient
from streamsync.adapters.store import Store
from streamsync.config import Config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.emulators.salesforce.actions import set_stage
from tests.conftest import build_config
from tests.e2e.harness import InProcessService, backfill, wait_caught_up, wait_for

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=3, seed_contacts=12, seed_leads=12,
                           seed_users=3, seed_queues=1, seed_opportunities=20),
    pytest.mark.timeout(60),
]

FAST_INGEST = {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0}
WON = {"name": "opportunity-won", "object": "Opportunity", "trigger": "update",
       "changed_fields": ["StageName"], "condition": "StageName = 'Closed Won'",
       "event_name": "opportunityWon", "profile": "primary_contact_role",
       "mapping": {"Name": "dataFields.opportunityName", "Amount": "dataFields.amount",
                   "Account.Name": "dataFields.accountName"}}
QUALIFIED = {"name": "lead-qualified", "object": "Lead", "trigger": "update",
             "condition": "Status = 'Closed - Converted' OR Status = 'Working - Contacted'",
             "event_name": "leadWorking", "mapping": {"Company": "dataFields.company"}}


@dataclass
class EventRig:
    sf: SalesforceEmulator
    it: IterableEmulator
    config: Config
    service: InProcessService
    store: Store
    client: IterableClient

    async def events_of(self, email: str) -> list[dict[str, Any]]:
        """The user's custom events, read through GET /api/events/{email}."""
        return [e for e in await self.client.user_events(email=email)
                if e.get("eventType") == "customEvent"]

    async def wait_events(self, email: str, count: int, timeout_s: float = 15.0
                          ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []

        async def enough() -> bool:
            nonlocal found
            found = await self.events_of(email)
            return len(found) >= count

        await wait_for(enough, timeout_s, f"{count} events of {email}", poll_s=0.1)
        return found

    async def settled(self) -> None:
        """Ingest caught up, the queue drained and no event row new or ready."""
        await wait_caught_up(self.store, self.sf, self.config, 20.0)

        async def idle() -> bool:
            counts = await self.store.event_counts()
            return not counts.get("new") and not counts.get("ready")

        await wait_for(idle, 15.0, "the event rows to settle")

    def email(self, sobject: str, record_id: str) -> str:
        record = self.sf.state.record(sobject, record_id)
        assert record is not None and record.get("Email"), record
        return str(record["Email"]).lower()

    def primary_contact(self, opportunity_id: str) -> str:
        rows = self.sf.select_ids("OpportunityContactRole",
                                  f"OpportunityId = '{opportunity_id}' AND IsPrimary = true", 1)
        role = self.sf.state.record("OpportunityContactRole", rows[0])
        assert role is not None
        return self.email("Contact", role["ContactId"])

    def open_opportunity(self) -> str:
        return self.sf.select_ids("Opportunity", "IsClosed = false AND IsDeleted = false", 1)[0]


RigFactory = Callable[..., Any]


@pytest.fixture
async def event_rig(sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
                    tmp_path: Path) -> AsyncIterator[RigFactory]:
    """`await event_rig(events=[...], **overrides)`: backfill, then the service running."""
    opened: list[tuple[InProcessService, Store]] = []
    session = aiohttp.ClientSession()
    client = IterableClient(session, iterable_emulator.base_url, iterable_emulator.api_key)

    async def make(**overrides: Any) -> EventRig:
        overrides["ingest"] = {**FAST_INGEST, **overrides.get("ingest", {})}
        config = build_config(sf_emulator, iterable_emulator, tmp_path, **overrides)
        await backfill(config)
        service = InProcessService(config)
        await service.start()
        store = await Store.open(config.queue.path)
        opened.append((service, store))
        assert service.service is not None and service.service.events is not None
        return EventRig(sf_emulator, iterable_emulator, config, service, store, client)

    try:
        yield make
    finally:
        for service, store in opened:
            await service.abandon()
            await store.close()
        await session.close()


async def test_closed_won_fires_once_on_the_primary_contact_not_on_later_updates(
        event_rig: RigFactory) -> None:
    rig: EventRig = await event_rig(events=[WON])
    opp = rig.open_opportunity()
    email = rig.primary_contact(opp)
    before = time.time()
    set_stage(rig.sf.state, opp, "Closed Won")
    [event] = await rig.wait_events(email, 1)
    record = rig.sf.state.record("Opportunity", opp)
    assert record is not None
    assert event["eventName"] == "opportunityWon"
    assert event["_id"].startswith(f"opportunity-won-{opp}-")
    assert event["dataFields"]["opportunityName"] == record["Name"]
    assert event["dataFields"]["amount"] == record["Amount"]
    assert event["dataFields"]["accountName"]
    stored = rig.it.messaging_for(rig.it.state.project()).events.by_id[event["_id"]]
    assert before - 1 <= stored.created_ms / 1000 <= time.time() + 1  # commit time, in seconds
    # An unrelated update, then a stage change that keeps it won: no second event.
    rig.sf.state.update("Opportunity", opp, {"NextStep": "Kick-off call"})
    rig.sf.state.update("Opportunity", opp, {"Amount": 123456.0})
    await rig.settled()
    assert len(await rig.events_of(email)) == 1
    assert stored.writes == 1


async def test_a_rule_without_changed_fields_fires_on_the_transition_only(
        event_rig: RigFactory) -> None:
    rig: EventRig = await event_rig(events=[QUALIFIED])
    lead = rig.sf.select_ids("Lead", "IsConverted = false AND Status = 'Open - Not Contacted' "
                                     "AND Email != null", 1)[0]
    email = rig.email("Lead", lead)
    rig.sf.state.update("Lead", lead, {"Title": "CTO"})  # unrelated, condition false
    rig.sf.state.update("Lead", lead, {"Status": "Working - Contacted"})
    rig.sf.state.update("Lead", lead, {"Title": "CEO"})  # unrelated, condition still true
    await rig.settled()
    [event] = await rig.events_of(email)
    assert event["eventName"] == "leadWorking"
    assert event["dataFields"]["company"] == rig.sf.state.record("Lead", lead)["Company"]


DELETED = {"name": "lead-gone", "object": "Lead", "trigger": ["delete", "undelete"],
           "event_name": "leadRecycled", "mapping": {"LastName": "dataFields.lastName"}}
CONVERTED = {"name": "lead-converted", "object": "Lead", "trigger": "update",
             "changed_fields": ["IsConverted"], "condition": "IsConverted = true",
             "event_name": "leadConverted", "profile": "ConvertedContact.Email",
             "mapping": {"ConvertedAccount.Name": "dataFields.account"}}


async def test_a_replay_from_an_older_replay_id_sends_nothing_again(
        event_rig: RigFactory) -> None:
    rig: EventRig = await event_rig(events=[WON])
    opp = rig.open_opportunity()
    email = rig.primary_contact(opp)
    channel = "/data/OpportunityChangeEvent"
    older = await rig.store.get_replay(channel)
    set_stage(rig.sf.state, opp, "Closed Won")
    [event] = await rig.wait_events(email, 1)
    await rig.settled()
    assert await rig.service.stop() == 0
    # Back to before the change: the CDC event is delivered again.
    await rig.store.set_replay(channel, older.replay_id if older else -2, time.time())
    await rig.service.start()
    await rig.settled()
    latest = await rig.store.get_replay(channel)
    assert latest is not None and latest.replay_id != (older.replay_id if older else -2)
    assert rig.service.service is not None and rig.service.service.ingest is not None
    assert rig.service.service.ingest.stats.events >= 1  # the change was delivered again
    assert [e["_id"] for e in await rig.events_of(email)] == [event["_id"]]
    stored = rig.it.messaging_for(rig.it.state.project()).events.by_id[event["_id"]]
    assert stored.writes == 1  # not even re-sent: the sent row is remembered


async def test_delete_and_undelete_triggers_land_on_the_records_profile(
        event_rig: RigFactory) -> None:
    rig: EventRig = await event_rig(events=[DELETED])
    lead = rig.sf.select_ids("Lead", "IsConverted = false AND Email != null", 1)[0]
    email = rig.email("Lead", lead)
    rig.sf.state.update("Lead", lead, {"Title": "unrelated"})
    rig.sf.state.delete("Lead", lead)
    rig.sf.state.undelete("Lead", lead)
    events = await rig.wait_events(email, 2)
    assert {e["eventName"] for e in events} == {"leadRecycled"}
    assert len({e["_id"] for e in events}) == 2
    assert all(e["dataFields"]["lastName"] == rig.sf.state.record("Lead", lead)["LastName"]
               for e in events)
    await rig.settled()
    assert len(await rig.events_of(email)) == 2  # the unrelated update fired nothing


async def test_a_profile_path_through_a_relationship(event_rig: RigFactory) -> None:
    rig: EventRig = await event_rig(events=[CONVERTED])
    lead = rig.sf.select_ids("Lead", "IsConverted = false AND Email != null", 1)[0]
    out = rig.sf.state.convert_lead(lead)
    contact_email = rig.email("Contact", out["contactId"])
    [event] = await rig.wait_events(contact_email, 1)
    account = rig.sf.state.record("Account", out["accountId"])
    assert event["eventName"] == "leadConverted"
    assert event["dataFields"]["account"] == account["Name"]


@pytest.mark.iterable(max_events_per_request=3)
async def test_track_bulk_batches_stay_within_the_endpoint_limit(
        event_rig: RigFactory) -> None:
    rig: EventRig = await event_rig(events=[WON], event_delivery={"batch_max_events": 3})
    opps = rig.sf.select_ids("Opportunity", "IsClosed = false AND IsDeleted = false", 10)
    assert len(opps) >= 4
    rig.sf.state.mass_update("Opportunity", opps, {"StageName": "Closed Won"})
    await rig.settled()
    store = rig.it.messaging_for(rig.it.state.project()).events
    won = [e for e in store.by_id.values() if e.event_name == "opportunityWon"]
    assert len(won) == len(opps) and all(e.writes == 1 for e in won)
    worker = rig.service.service.events  # type: ignore[union-attr]
    assert worker is not None and worker.stats.calls == -(-len(opps) // 3)


async def test_a_change_made_while_down_before_any_event_was_stored_still_fires(
        event_rig: RigFactory) -> None:
    """The Opportunity channel (only a rule listens to it) has no replay id stored yet: its
    resubscribe replays what is retained, from its first subscription on."""
    rig: EventRig = await event_rig(events=[WON])
    earlier = rig.open_opportunity()
    assert await rig.service.stop() == 0
    assert await rig.store.get_replay("/data/OpportunityChangeEvent") is None
    set_stage(rig.sf.state, earlier, "Closed Won")  # while the service is down
    await rig.service.start()
    [event] = await rig.wait_events(rig.primary_contact(earlier), 1)
    assert event["_id"].startswith(f"opportunity-won-{earlier}-")
