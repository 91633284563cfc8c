"""Consent, Iterable → Salesforce (issue 13 items 3 and 4), end to end over loopback HTTP: the
service on both emulators, the Iterable emulator delivering its system webhooks to the
service's receiver. An opt-out made on either side ends with both sides consistent and exactly
one write in each direction; several records holding the email are all written; a lost
webhook is found by the export poller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamsync.adapters.store import Store
from streamsync.config import Config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime.consent_inbound import inbound_of
from tests.conftest import build_config
from tests.e2e.harness import E2EError, InProcessService, backfill, wait_caught_up, wait_for

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=1, seed_contacts=4, seed_leads=6,
                           seed_users=2, seed_queues=1),
    pytest.mark.timeout(90),
]

MARKETING_EMAIL, MARKETING_SMS = 39581, 39584
SECRET = "e2e-webhook-secret-0123456789"
PUT_GROUP = "PUT /api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}"
FAST_INGEST = {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0}
CONSENT = {"unsubscribe_channel_ids": [MARKETING_EMAIL]}
WITHIN_S = 10.0


class Rig:
    def __init__(self, sf: SalesforceEmulator, it: IterableEmulator, config: Config,
                 service: InProcessService, store: Store, http: aiohttp.ClientSession) -> None:
        self.sf, self.it, self.config, self.service = sf, it, config, service
        self.store, self.http = store, http

    @property
    def inbound(self) -> Any:
        assert self.service.service is not None
        return inbound_of(self.service.service)

    async def control(self, what: str, body: dict[str, Any]) -> Any:
        async with self.http.post(f"{self.it.control_url}/{what}", json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    def person(self, sobject: str = "Lead", n: int = 0) -> tuple[str, str]:
        extra = " AND IsConverted = false" if sobject == "Lead" else ""
        ids = self.sf.select_ids(sobject, "IsDeleted = false AND Email != null AND "
                                 f"HasOptedOutOfEmail = false{extra}", 100)
        record = self.sf.state.record(sobject, ids[n])
        assert record is not None
        return ids[n], str(record["Email"]).lower()

    def opted_out(self, sobject: str, record_id: str) -> bool:
        record = self.sf.state.record(sobject, record_id)
        return record is not None and record["HasOptedOutOfEmail"] is True

    def our_salesforce_writes(self, record_id: str) -> int:
        """CDC events of our own writes to this record (changeOrigin names streamsync)."""
        return sum(1 for e in self.sf.state.event_log
                   if e["ChangeEventHeader"]["changeOrigin"].endswith("client=streamsync")
                   and record_id in e["ChangeEventHeader"]["recordIds"])

    def put_calls(self) -> int:
        return int(self.it.state.writes()["calls"].get(PUT_GROUP, 0))

    async def settled(self) -> None:
        """Webhooks delivered, the inbox drained, and Salesforce's echoes through the sync."""
        await self.it.webhooks.wait_idle()

        async def drained() -> bool:
            return "pending" not in await self.store.consent_inbox_counts()

        await wait_for(drained, WITHIN_S, "the consent inbox to drain")
        self.service.assert_running()
        await wait_caught_up(self.store, self.sf, self.config, WITHIN_S)


RigFactory = Callable[..., Any]


@pytest.fixture
async def rig_factory(sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
                      tmp_path: Path) -> AsyncIterator[RigFactory]:
    opened: list[tuple[InProcessService, Store]] = []
    async with aiohttp.ClientSession() as http:

        async def make(webhook: bool = True) -> Rig:
            config = build_config(
                sf_emulator, iterable_emulator, tmp_path, env={
                    "STREAMSYNC_ITERABLE_WEBHOOK_SECRET": SECRET},
                ingest=FAST_INGEST,
                objects={"Lead": {"consent": CONSENT}, "Contact": {"consent": CONSENT}},
                consent_inbound={"webhook": {"port": 0, "enabled": webhook},
                                 "poll": {"interval_s": 3600}})
            await backfill(config)
            service = InProcessService(config)
            await service.start()
            store = await Store.open(config.queue.path)
            opened.append((service, store))
            rig = Rig(sf_emulator, iterable_emulator, config, service, store, http)
            settings = iterable_emulator.webhooks.settings
            if webhook:
                async def bound() -> bool:
                    return rig.inbound.webhook.port is not None

                await wait_for(bound, WITHIN_S, "the webhook receiver to listen")
                port = rig.inbound.webhook.port
                settings.url = f"http://127.0.0.1:{port}/iterable/webhook"
                settings.auth_type, settings.auth_token = "Basic", SECRET
                settings.backoff_s = 0.05
            return rig

        try:
            yield make
        finally:
            for service, store in opened:
                await service.abandon()
                await store.close()


async def test_an_iterable_unsubscribe_reaches_salesforce_with_one_write_and_no_echo(
        rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    lead, email = rig.person("Lead")
    puts = rig.put_calls()
    await rig.control("click", {"email": email, "channelId": MARKETING_EMAIL})  # a person

    async def opted_out() -> bool:
        return rig.opted_out("Lead", lead)

    await wait_for(opted_out, WITHIN_S, "the unsubscribe to reach Salesforce")
    await rig.settled()
    assert rig.our_salesforce_writes(lead) == 1  # Iterable → Salesforce: one write
    assert rig.put_calls() == puts  # its CDC echo sent nothing back to Iterable
    stored = (await rig.store.consent_states("Lead", [lead]))[lead]
    assert (stored.opted_out, stored.origin) == (True, "iterable")


async def test_a_salesforce_opt_out_reaches_iterable_once_and_its_echo_writes_nothing_back(
        rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    lead, email = rig.person("Lead", 1)
    puts = rig.put_calls()
    events_before = len(rig.it.messaging_for(rig.it.project).log.events)
    rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})  # a person, in Salesforce

    async def webhook_echo() -> bool:  # Iterable's unsubscribe event of our own PUT
        return len(rig.it.messaging_for(rig.it.project).log.events) > events_before

    await wait_for(webhook_echo, WITHIN_S, "the opt-out to reach Iterable")
    await rig.settled()
    assert rig.put_calls() - puts == 1  # Salesforce → Iterable: one write
    assert rig.our_salesforce_writes(lead) == 0  # the webhook echo wrote nothing back
    (row,) = [r for r in await _inbox(rig) if r.email == email]
    assert row.state == "done" and "already" in (row.outcome or "") and row.source == "API"


async def poll_until_found(rig: Rig, email: str) -> None:
    """Poll as the poller's next tick would (a window ends before the current second) until
    the inbox holds an event of `email`. Not just any event: the export also shows the
    unsubscribes our own backfill made (source API), and a poll that found only those would
    leave the click for a tick that never comes in the test."""
    async def polled() -> bool:
        await rig.inbound.poller.poll_once()
        return any(e.email == email for e in await _inbox(rig))

    await wait_for(polled, WITHIN_S, "the export to show the event")


async def _inbox(rig: Rig) -> list[Any]:
    import sqlite3
    with sqlite3.connect(rig.store.path) as conn:
        keys = [k for (k,) in conn.execute("SELECT event_key FROM consent_inbox")]
    return list((await rig.store.consent_events(keys)).values())


async def test_every_record_holding_the_email_is_written_and_a_subscribe_back_clears_them(
        rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    lead, email = rig.person("Lead", 2)
    contact, _ = rig.person("Contact", 0)
    other_lead, _ = rig.person("Lead", 3)
    rig.sf.state.update("Contact", contact, {"Email": email})
    rig.sf.state.update("Lead", other_lead, {"Email": email.upper()})
    await rig.settled()
    await rig.control("click", {"email": email, "channelId": MARKETING_EMAIL})

    async def all_out() -> bool:
        return all(rig.opted_out(o, i) for o, i in (
            ("Lead", lead), ("Lead", other_lead), ("Contact", contact)))

    await wait_for(all_out, WITHIN_S, "every record holding the email to opt out")
    await rig.settled()
    assert [rig.our_salesforce_writes(i) for i in (lead, other_lead, contact)] == [1, 1, 1]
    # The person subscribes again in Iterable, a while later (within the same second as our
    # write it would be a tie, which the opt-out wins): consent given back is written back.
    await asyncio.sleep(1.0)
    await rig.control("signup", {"email": email, "channelId": MARKETING_EMAIL})

    async def all_in() -> bool:
        return not any(rig.opted_out(o, i) for o, i in (
            ("Lead", lead), ("Lead", other_lead), ("Contact", contact)))

    await wait_for(all_in, WITHIN_S, "the subscribe to clear the opt-outs")
    await rig.settled()
    assert [rig.our_salesforce_writes(i) for i in (lead, other_lead, contact)] == [2, 2, 2]


async def test_an_unsubscribe_from_another_channel_changes_nothing(
        rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    lead, email = rig.person("Lead", 4)
    await rig.control("click", {"email": email, "channelId": MARKETING_SMS})
    await rig.settled()
    assert not rig.opted_out("Lead", lead) and rig.our_salesforce_writes(lead) == 0


async def test_a_lost_webhook_is_found_by_the_export_poller(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    lead, email = rig.person("Lead", 0)
    rig.it.webhooks.set_faults(lose_next=1)
    await rig.control("click", {"email": email, "channelId": MARKETING_EMAIL})
    await rig.settled()
    assert not rig.opted_out("Lead", lead)  # the delivery was lost
    await poll_until_found(rig, email)  # the poller's next tick

    async def opted_out() -> bool:
        return rig.opted_out("Lead", lead)

    await wait_for(opted_out, WITHIN_S, "the exported unsubscribe to reach Salesforce")
    await rig.settled()
    assert rig.our_salesforce_writes(lead) == 1


async def test_without_inbound_http_the_poller_alone_carries_unsubscribes(
        rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory(webhook=False)
    assert rig.inbound.webhook is None
    contact, email = rig.person("Contact", 1)
    await rig.control("click", {"email": email, "channelId": MARKETING_EMAIL})
    await poll_until_found(rig, email)

    async def opted_out() -> bool:
        return rig.opted_out("Contact", contact)

    await wait_for(opted_out, WITHIN_S, "the exported unsubscribe to reach Salesforce")


async def test_a_webhook_port_that_cannot_be_bound_stops_the_service_naming_it(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = build_config(
            sf_emulator, iterable_emulator, tmp_path,
            env={"STREAMSYNC_ITERABLE_WEBHOOK_SECRET": SECRET}, ingest=FAST_INGEST,
            objects={"Lead": {"consent": CONSENT}},
            consent_inbound={"webhook": {"port": port}, "poll": {"enabled": False}})
        service = InProcessService(config)
        try:
            with contextlib.suppress(E2EError):  # it may end before it subscribes
                await service.start()
            assert service.task is not None
            assert await asyncio.wait_for(service.task, 20) == 1
        finally:
            await service.abandon()
    store = await Store.open(config.queue.path)
    try:
        errors = [e.message for e in await store.recent_errors(5)]
    finally:
        await store.close()
    assert any(f"consent_inbound.webhook.port = {port}: cannot listen on 127.0.0.1:{port}" in e
               for e in errors), errors
