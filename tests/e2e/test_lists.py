"""[lists] end to end (issue 14, item 3): the service on both emulators over loopback HTTP turns
CampaignMember creates, deletes, status changes and Lead conversions into Iterable static list
subscriptions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamsync.adapters.store import Store
from streamsync.config import Config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.iterable.api_lists import members
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.final_state import read_lists
from tests.conftest import build_config, production_components
from tests.e2e.harness import InProcessService, wait_caught_up, wait_for

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=2, seed_contacts=6, seed_leads=6,
                           seed_users=2, seed_queues=1),
    pytest.mark.timeout(60),
]

FAST_INGEST = {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0}
WAIT_S = 15.0


def list_emails(it: IterableEmulator, list_id: int) -> set[str]:
    """The emails on an Iterable list, as the emulator holds them."""
    return {str(p.email) for p in members(it.project, list_id)}


async def subscribe_stray(it: IterableEmulator, list_id: int, email: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{it.base_url}/api/lists/subscribe",
                             headers={"Api-Key": it.api_key},
                             json={"listId": list_id, "subscribers": [{"email": email}]}) as r:
            assert r.status == 200, await r.text()


def make_list(it: IterableEmulator, name: str) -> int:
    return it.messaging_for(it.project).catalog.add_list(name, None, 0).id


@dataclass
class ListRig:
    sf: SalesforceEmulator
    it: IterableEmulator
    config: Config
    service: InProcessService
    store: Store

    def email(self, sobject: str, record_id: str) -> str:
        record = self.sf.state.record(sobject, record_id)
        assert record is not None and record.get("Email"), record
        return str(record["Email"]).lower()

    def people(self, sobject: str) -> list[str]:
        extra = " AND IsConverted = false" if sobject == "Lead" else ""
        return self.sf.select_ids(sobject, "IsDeleted = false AND Email != null" + extra)

    def add(self, campaign: str, person: str, status: str | None = None) -> str:
        field = "LeadId" if person.startswith("00Q") else "ContactId"
        values = {"CampaignId": campaign, field: person}
        if status is not None:
            values["Status"] = status
        return self.sf.state.create("CampaignMember", values)

    async def settled(self) -> None:
        self.service.assert_running()
        await wait_caught_up(self.store, self.sf, self.config, WAIT_S)

    async def until(self, list_id: int, emails: set[str]) -> None:
        async def equal() -> bool:
            return list_emails(self.it, list_id) == emails

        try:
            await wait_for(equal, WAIT_S, f"list {list_id} to hold {sorted(emails)}")
        finally:
            self.service.assert_running()


RigFactory = Callable[..., Any]


@pytest.fixture
async def lists_rig(sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
                    tmp_path: Path) -> AsyncIterator[RigFactory]:
    """`await lists_rig(campaigns=[...], **overrides)`: the service running with [lists]."""
    opened: list[tuple[InProcessService, Store]] = []

    async def make(campaigns: list[dict[str, Any]], **overrides: Any) -> ListRig:
        config = build_config(sf_emulator, iterable_emulator, tmp_path,
                              ingest=FAST_INGEST, lists={"campaigns": campaigns}, **overrides)
        service = InProcessService(config)
        await service.start()
        store = await Store.open(config.queue.path)
        opened.append((service, store))
        return ListRig(sf_emulator, iterable_emulator, config, service, store)

    try:
        yield make
    finally:
        for service, store in opened:
            await service.abandon()
            await store.close()


def new_campaign(sf: SalesforceEmulator, name: str) -> str:
    return sf.state.create("Campaign", {"Name": name, "IsActive": True})


async def test_member_added_is_subscribed_and_deleted_is_unsubscribed(
        lists_rig: RigFactory, sf_emulator: SalesforceEmulator,
        iterable_emulator: IterableEmulator) -> None:
    sf_campaign = new_campaign(sf_emulator, "Spring")
    list_id = make_list(iterable_emulator, "Spring list")
    rig: ListRig = await lists_rig([{"campaign_id": sf_campaign, "list_id": list_id}])
    lead, contact = rig.people("Lead")[0], rig.people("Contact")[0]
    lead_member = rig.add(sf_campaign, lead)
    contact_member = rig.add(sf_campaign, contact)
    await rig.until(list_id, {rig.email("Lead", lead), rig.email("Contact", contact)})
    rig.sf.state.delete("CampaignMember", lead_member)
    await rig.until(list_id, {rig.email("Contact", contact)})
    await rig.settled()
    async with production_components(rig.config) as parts:
        report = await read_lists(rig.config, parts)
        assert report.ok and (report.lists, report.members) == (1, 1), report.summary()
        await subscribe_stray(rig.it, list_id, "stray@example.com")
        report = await read_lists(rig.config, parts)
        assert [(m.missing, m.unexpected) for m in report.mismatches] == \
            [([], ["stray@example.com"])]
    rig.sf.state.delete("CampaignMember", contact_member)
    await rig.until(list_id, {"stray@example.com"})
    await rig.settled()
    assert await rig.store.list_member_rows(list_id) == []


async def test_only_counted_statuses_are_members(
        lists_rig: RigFactory, sf_emulator: SalesforceEmulator,
        iterable_emulator: IterableEmulator) -> None:
    campaign = new_campaign(sf_emulator, "Webinar")
    list_id = make_list(iterable_emulator, "Webinar responders")
    rig: ListRig = await lists_rig([{"campaign_id": campaign, "list_id": list_id,
                                     "statuses": ["Responded"]}])
    sent, responded = rig.people("Lead")[:2]
    sent_member = rig.add(campaign, sent)  # default Status: Sent
    rig.add(campaign, responded, status="Responded")
    await rig.until(list_id, {rig.email("Lead", responded)})
    rig.sf.state.update("CampaignMember", sent_member, {"Status": "Responded"})
    await rig.until(list_id, {rig.email("Lead", responded), rig.email("Lead", sent)})
    rig.sf.state.update("CampaignMember", sent_member, {"Status": "Sent"})
    await rig.until(list_id, {rig.email("Lead", responded)})
    await rig.settled()
    assert list_emails(rig.it, list_id) == {rig.email("Lead", responded)}


async def test_a_converted_leads_membership_follows_it_to_the_contact(
        lists_rig: RigFactory, sf_emulator: SalesforceEmulator,
        iterable_emulator: IterableEmulator) -> None:
    campaign = new_campaign(sf_emulator, "Trade show")
    list_id = make_list(iterable_emulator, "Trade show")
    rig: ListRig = await lists_rig([{"campaign_id": campaign, "list_id": list_id}])
    lead = rig.people("Lead")[0]
    email = rig.email("Lead", lead)
    member = rig.add(campaign, lead)
    await rig.until(list_id, {email})
    converted = rig.sf.state.convert_lead(lead)
    contact = converted["contactId"]
    await rig.settled()
    row = rig.sf.state.record("CampaignMember", member)
    assert row is not None and str(row["ContactId"])[:15] == contact[:15]
    assert list_emails(rig.it, list_id) == {email}
    stored = await rig.store.list_members_of([row["Id"]])
    assert [(r.person_id[:15], r.state) for r in stored] == [(contact[:15], "in")]
    # The Contact now holds the membership: removing the Contact removes the subscription.
    rig.sf.state.delete("CampaignMember", member)
    await rig.until(list_id, set())


async def test_a_list_named_after_the_campaign_is_created_and_filled(
        lists_rig: RigFactory, sf_emulator: SalesforceEmulator,
        iterable_emulator: IterableEmulator) -> None:
    new_campaign(sf_emulator, "Autumn launch")
    campaign = sf_emulator.select_ids("Campaign", "Name = 'Autumn launch'")[0]
    catalog = iterable_emulator.messaging_for(iterable_emulator.project).catalog
    assert not [lst for lst in catalog.lists.values() if lst.name == "Autumn launch"]
    rig: ListRig = await lists_rig([{"campaign_name": "Autumn launch", "create_missing": True}])
    created = [lst.id for lst in catalog.lists.values() if lst.name == "Autumn launch"]
    assert len(created) == 1
    contact = rig.people("Contact")[0]
    rig.add(campaign, contact)
    await rig.until(created[0], {rig.email("Contact", contact)})
    # A restart finds the list by name instead of creating a second one.
    await rig.service.stop()
    await rig.service.start()
    assert [lst.id for lst in catalog.lists.values() if lst.name == "Autumn launch"] == created


async def test_a_member_whose_email_another_member_holds_stays_subscribed(
        lists_rig: RigFactory, sf_emulator: SalesforceEmulator,
        iterable_emulator: IterableEmulator) -> None:
    campaign = new_campaign(sf_emulator, "Shared")
    list_id = make_list(iterable_emulator, "Shared")
    rig: ListRig = await lists_rig([{"campaign_id": campaign, "list_id": list_id}])
    contact = rig.people("Contact")[0]
    email = rig.email("Contact", contact)
    lead = rig.people("Lead")[0]
    rig.sf.state.update("Lead", lead, {"Email": email})  # same person, as Lead and Contact
    lead_member = rig.add(campaign, lead)
    rig.add(campaign, contact)
    await rig.until(list_id, {email})
    await rig.settled()
    rig.sf.state.delete("CampaignMember", lead_member)
    await rig.settled()
    assert list_emails(rig.it, list_id) == {email}


async def test_a_member_whose_email_changed_is_unsubscribed_under_its_new_email(
        lists_rig: RigFactory, sf_emulator: SalesforceEmulator,
        iterable_emulator: IterableEmulator) -> None:
    campaign = new_campaign(sf_emulator, "Moves")
    list_id = make_list(iterable_emulator, "Moves")
    rig: ListRig = await lists_rig([{"campaign_id": campaign, "list_id": list_id}])
    contact = rig.people("Contact")[0]
    member = rig.add(campaign, contact)
    await rig.until(list_id, {rig.email("Contact", contact)})
    # The profile moves to the new email in Iterable (updateEmail), its lists with it; the
    # CampaignMember itself does not change, so the store still has the old email.
    rig.sf.state.update("Contact", contact, {"Email": "moved.person@example.org"})
    await rig.until(list_id, {"moved.person@example.org"})
    await rig.settled()
    rig.sf.state.delete("CampaignMember", member)
    await rig.until(list_id, set())
    assert list_emails(rig.it, list_id) == set()
