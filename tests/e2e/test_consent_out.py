"""Consent, Salesforce → Iterable (issue 13 items 2 and 4), end to end over loopback HTTP: the
service on both emulators; an opt-out made in Salesforce unsubscribes the person from the
configured groups only, a cleared opt-out re-subscribes only when configured, and the CDC echo
of our own Salesforce write (client name in changeOrigin) writes nothing to Iterable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamsync.adapters.store import ConsentRow, Store
from streamsync.config import Config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from tests.conftest import build_config, production_components
from tests.e2e.harness import InProcessService, backfill, wait_caught_up, wait_for

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=1, seed_contacts=3, seed_leads=6,
                           seed_users=2, seed_queues=1),
    pytest.mark.timeout(60),
]

MARKETING_EMAIL, MARKETING_SMS = 39581, 39584
NEWSLETTER = 48921
PUT_GROUP = "PUT /api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}"
FAST_INGEST = {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0}
WITHIN_S = 10.0


class Rig:
    """The running service, its emulators, a store connection and the control API."""

    def __init__(self, sf: SalesforceEmulator, it: IterableEmulator, config: Config,
                 service: InProcessService, store: Store, http: aiohttp.ClientSession) -> None:
        self.sf, self.it, self.config, self.service = sf, it, config, service
        self.store, self.http = store, http

    async def control(self, what: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.it.control_url}/{what}"
        call = self.http.get(url) if body is None else self.http.post(url, json=body)
        async with call as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def subs(self, email: str) -> dict[str, Any]:
        found = await self.control(f"subscriptions?key={email}")
        assert email in found, found
        return dict(found[email])

    async def caught_up(self) -> None:
        self.service.assert_running()
        await wait_caught_up(self.store, self.sf, self.config, WITHIN_S)

    def lead(self, n: int = 0) -> tuple[str, str]:
        ids = self.sf.select_ids("Lead", "IsDeleted = false AND Email != null AND "
                                 "IsConverted = false AND HasOptedOutOfEmail = false", 100)
        record = self.sf.state.record("Lead", ids[n])
        assert record is not None
        return ids[n], str(record["Email"]).lower()

    def put_calls(self) -> int:
        return self.it.state.writes()["calls"].get(PUT_GROUP, 0)


RigFactory = Callable[..., Any]


@pytest.fixture
async def rig_factory(sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
                      tmp_path: Path) -> AsyncIterator[RigFactory]:
    opened: list[tuple[InProcessService, Store]] = []
    async with aiohttp.ClientSession() as http:

        async def make(consent: dict[str, Any], **overrides: Any) -> Rig:
            config = build_config(sf_emulator, iterable_emulator, tmp_path,
                                  ingest=FAST_INGEST, objects={"Lead": {"consent": consent}},
                                  **overrides)
            await backfill(config)
            service = InProcessService(config)
            await service.start()
            store = await Store.open(config.queue.path)
            opened.append((service, store))
            return Rig(sf_emulator, iterable_emulator, config, service, store, http)

        try:
            yield make
        finally:
            for service, store in opened:
                await service.abandon()
                await store.close()


async def test_salesforce_opt_out_unsubscribes_the_configured_channel_only(
        rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory({"unsubscribe_channel_ids": [MARKETING_EMAIL]})
    lead, email = rig.lead()
    # The person's own choices in Iterable: out of SMS, into a list.
    await rig.control("click", {"email": email, "channelId": MARKETING_SMS})
    webinar = (await rig.control("lists", {"name": "Webinar"}))["id"]
    await rig.control("signup", {"email": email, "listId": webinar})
    rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})  # a person, in Salesforce

    async def unsubscribed() -> bool:
        return MARKETING_EMAIL in (await rig.subs(email))["unsubscribedChannelIds"]

    await wait_for(unsubscribed, WITHIN_S, "the opt-out to unsubscribe the channel")
    await rig.caught_up()  # the state is stored after Iterable answered, before the ack
    subs = await rig.subs(email)
    assert sorted(subs["unsubscribedChannelIds"]) == [MARKETING_EMAIL, MARKETING_SMS]
    assert subs["emailListIds"] == [webinar]
    stored = (await rig.store.consent_states("Lead", [lead]))[lead]
    assert (stored.opted_out, stored.origin) == (True, "salesforce")

    # Cleared in Salesforce: not re-subscribed (resubscribe = false), the profile still syncs.
    rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": False, "FirstName": "Back"})
    await rig.caught_up()
    rig.it.flush()
    assert rig.it.state.snapshot()[email]["dataFields"]["firstName"] == "Back"
    assert MARKETING_EMAIL in (await rig.subs(email))["unsubscribedChannelIds"]
    assert (await rig.store.consent_states("Lead", [lead]))[lead].opted_out is False


async def test_a_cleared_opt_out_resubscribes_when_configured(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory({"unsubscribe_channel_ids": [MARKETING_EMAIL],
                                  "unsubscribe_message_type_ids": [NEWSLETTER],
                                  "remove_from_lists": ["Customers"], "resubscribe": True})
    customers = (await rig.control("lists", {"name": "Customers"}))["id"]
    lead, email = rig.lead(1)
    await rig.control("signup", {"email": email, "listId": customers})
    await rig.control("click", {"email": email, "channelId": MARKETING_SMS})
    rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})

    async def opted_out() -> bool:
        subs = await rig.subs(email)
        return (MARKETING_EMAIL in subs["unsubscribedChannelIds"]
                and NEWSLETTER in subs["unsubscribedMessageTypeIds"]
                and customers not in subs["emailListIds"])

    await wait_for(opted_out, WITHIN_S, "channel, message type and list opt-out")
    rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": False})

    async def back_in() -> bool:
        subs = await rig.subs(email)
        return (MARKETING_EMAIL not in subs["unsubscribedChannelIds"]
                and NEWSLETTER not in subs["unsubscribedMessageTypeIds"]
                and customers in subs["emailListIds"])

    await wait_for(back_in, WITHIN_S, "the re-subscription")
    assert (await rig.subs(email))["unsubscribedChannelIds"] == [MARKETING_SMS]  # theirs stays


async def test_the_echo_of_our_own_salesforce_write_is_not_sent_back(
        rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory({"unsubscribe_channel_ids": [MARKETING_EMAIL]})
    (ours, our_email), (theirs, their_email) = rig.lead(2), rig.lead(3)
    await rig.caught_up()
    before = rig.put_calls()
    # What the Iterable → Salesforce direction does after an unsubscribe click: write the
    # opt-out through the product's client, whose Sforce-Call-Options names streamsync.
    await rig.control("click", {"email": our_email, "channelId": MARKETING_EMAIL})
    async with production_components(rig.config) as parts:
        await parts.salesforce.sobject_update("Lead", ours, {"HasOptedOutOfEmail": True})
    # The same change by a person: it must be written (so the test can tell the two apart).
    rig.sf.state.update("Lead", theirs, {"HasOptedOutOfEmail": True})

    async def theirs_unsubscribed() -> bool:
        return MARKETING_EMAIL in (await rig.subs(their_email))["unsubscribedChannelIds"]

    await wait_for(theirs_unsubscribed, WITHIN_S, "the person's opt-out to reach Iterable")
    await rig.caught_up()
    assert rig.put_calls() - before == 1  # theirs only: the echo wrote nothing
    stored = await rig.store.consent_states("Lead", [ours, theirs])
    assert stored[ours] == ConsentRow("Lead", ours, True, stored[ours].changed_at_ms, "iterable")
    assert stored[theirs].origin == "salesforce"
