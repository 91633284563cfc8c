"""End-to-end scenarios (issue 4, item 11): the whole service in process on both emulators; every
scenario makes its change in Salesforce (or breaks something), waits until the service caught
up, and ends in the record-by-record final-state comparison of Iterable with Salesforce."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import streamsync.runtime.app as app_module
from streamsync.adapters.store import Store
from streamsync.config import Config
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.models import DeadLetterReason
from streamsync.runtime.flusher import Flusher
from tests.conftest import build_config
from tests.e2e.harness import (
    FinalState,
    FinalStateChecker,
    InProcessService,
    backfill,
    silent_update,
    wait_caught_up,
)

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=3, seed_contacts=12, seed_leads=12,
                           seed_users=3, seed_queues=1),
    pytest.mark.timeout(60),
]

BULK_UPDATE = "/api/users/bulkUpdate"
CATCH_UP_S = 20.0
FAST_INGEST = {"watchdog_s": 5.0, "long_poll_timeout_s": 3.0, "reconcile_overlap_s": 5.0}


@dataclass
class Rig:
    """Both emulators, the running service, a store connection of the test's own, a checker."""

    sf: SalesforceEmulator
    it: IterableEmulator
    config: Config
    service: InProcessService
    store: Store
    checker: FinalStateChecker

    async def caught_up(self, timeout_s: float = CATCH_UP_S) -> None:
        self.service.assert_running()
        await wait_caught_up(self.store, self.sf, self.config, timeout_s)

    async def final_state(self, timeout_s: float = 10.0) -> FinalState:
        """Catch up, then the comparison must pass."""
        await self.caught_up()
        return await self.checker.assert_consistent(timeout_s)

    def ids(self, sobject: str, where: str = "IsDeleted = false", limit: int = 10_000
            ) -> list[str]:
        return self.sf.select_ids(sobject, where, limit)

    def live_with_email(self, sobject: str) -> list[str]:
        extra = " AND IsConverted = false" if sobject == "Lead" else ""
        return self.ids(sobject, "IsDeleted = false AND Email != null" + extra)

    def email(self, sobject: str, record_id: str) -> str:
        record = self.sf.state.record(sobject, record_id)
        assert record is not None and record.get("Email"), record
        return str(record["Email"]).lower()

    def profile(self, email: str) -> dict[str, Any]:
        self.it.flush()
        found = self.it.state.snapshot().get(email.lower())
        assert found is not None, f"no Iterable profile for {email}"
        return found


RigFactory = Callable[..., Any]


@pytest.fixture
async def rig_factory(sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
                      tmp_path: Path) -> AsyncIterator[RigFactory]:
    """`await rig_factory(**config_overrides)`: backfill, then the service running."""
    opened: list[tuple[InProcessService, Store, Any]] = []

    async def make(**overrides: Any) -> Rig:
        overrides["ingest"] = {**FAST_INGEST, **overrides.get("ingest", {})}
        config = build_config(sf_emulator, iterable_emulator, tmp_path, **overrides)
        await backfill(config)
        service = InProcessService(config)
        await service.start()
        store = await Store.open(config.queue.path)
        checker_cm = FinalStateChecker.open(config, iterable_emulator)
        checker = await checker_cm.__aenter__()
        opened.append((service, store, checker_cm))
        return Rig(sf_emulator, iterable_emulator, config, service, store, checker)

    try:
        yield make
    finally:
        for service, store, checker_cm in opened:
            await service.abandon()
            await checker_cm.__aexit__(None, None, None)
            await store.close()


async def test_create(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    lead_id = rig.sf.state.create("Lead", {
        "FirstName": "Ada", "LastName": "Lovelace", "Email": "ada.lovelace@example.com",
        "Company": "Analytical Engines", "Status": "Open - Not Contacted"})
    account = rig.ids("Account")[0]
    rig.sf.state.create("Contact", {"FirstName": "Alan", "LastName": "Turing",
                                    "Email": "alan.turing@example.com", "AccountId": account})
    state = await rig.final_state()
    profile = rig.profile("ada.lovelace@example.com")
    assert profile["dataFields"]["firstName"] == "Ada"
    assert profile["dataFields"]["sfLeadId"].startswith(lead_id[:15])
    assert rig.profile("alan.turing@example.com")["dataFields"]["lastName"] == "Turing"
    assert state.records_compared >= 26


async def test_update_reaches_the_profile(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    lead = rig.live_with_email("Lead")[0]
    contact = rig.live_with_email("Contact")[0]
    rig.sf.state.update("Lead", lead, {"FirstName": "Grace", "Status": "Working - Contacted"})
    rig.sf.state.update("Contact", contact, {"LastName": "Hopper", "LeadSource": None})
    await rig.final_state()
    assert rig.profile(rig.email("Lead", lead))["dataFields"]["leadStatus"] == \
        "Working - Contacted"
    assert rig.profile(rig.email("Contact", contact))["dataFields"]["lastName"] == "Hopper"


async def test_delete_flags_or_deletes_by_policy(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory(objects={"Lead": {"delete_policy": "delete"}})
    lead = rig.live_with_email("Lead")[0]
    contact = rig.live_with_email("Contact")[0]
    lead_email, contact_email = rig.email("Lead", lead), rig.email("Contact", contact)
    rig.profile(lead_email)  # there before the delete
    rig.sf.state.delete("Lead", lead)
    rig.sf.state.delete("Contact", contact)
    await rig.final_state()
    assert lead_email not in rig.it.state.snapshot()  # Lead: delete policy
    assert rig.profile(contact_email)["dataFields"]["salesforceDeleted"] is True  # Contact: flag


async def test_undelete_restores_the_profile(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory(objects={"Lead": {"delete_policy": "delete"}})
    lead = rig.live_with_email("Lead")[0]
    contact = rig.live_with_email("Contact")[0]
    rig.sf.state.delete("Lead", lead)
    rig.sf.state.delete("Contact", contact)
    await rig.final_state()
    rig.sf.state.undelete("Lead", lead)
    rig.sf.state.undelete("Contact", contact)
    await rig.final_state()
    assert rig.profile(rig.email("Lead", lead))["dataFields"]["sfLeadId"] == lead
    assert rig.profile(rig.email("Contact", contact))["dataFields"].get(
        "salesforceDeleted") is not True


async def test_merged_mass_update(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    leads = rig.live_with_email("Lead")
    published = rig.sf.bus.latest_replay_id
    rig.sf.state.mass_update("Lead", leads, {"FirstName": "Merged", "Status": "Qualified"})
    events = list(rig.sf.bus.events_after(published))
    assert len(events) < len(leads)  # merged: one event names many records
    await rig.final_state()
    for lead in leads:
        data = rig.profile(rig.email("Lead", lead))["dataFields"]
        assert (data["firstName"], data["leadStatus"]) == ("Merged", "Qualified")


async def test_lead_conversion_keeps_one_profile(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    lead = rig.live_with_email("Lead")[0]
    email = rig.email("Lead", lead)
    result = rig.sf.state.convert_lead(lead)
    await rig.final_state()
    data = rig.profile(email)["dataFields"]
    assert data["sfContactId"] == result["contactId"]  # the Contact it became wins
    assert sum(1 for key in rig.it.state.snapshot() if key == email) == 1


async def test_account_rename_fans_out_across_pages(
        rig_factory: RigFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "Flusher", functools.partial(Flusher, fanout_page=3))
    rig: Rig = await rig_factory()
    assert rig.service.service is not None and rig.service.service.flusher is not None
    assert rig.service.service.flusher.fanout_page == 3
    account = rig.ids("Account")[0]
    for n in range(8):
        rig.sf.state.create("Contact", {"FirstName": f"Fan{n}", "LastName": "Out",
                                        "Email": f"fan{n}.out@example.com", "AccountId": account})
    await rig.caught_up()
    contacts = rig.ids("Contact", f"IsDeleted = false AND AccountId = '{account}'")
    assert len(contacts) > 3 * 2  # more than two fan-out pages
    rig.sf.state.update("Account", account, {"Name": "Renamed Holdings"})
    await rig.final_state()
    for contact in contacts:
        assert rig.profile(rig.email("Contact", contact))["dataFields"]["Company"]["Name"] == \
            "Renamed Holdings"


async def test_email_change_keeps_the_same_profile(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    contact = rig.live_with_email("Contact")[0]
    old = rig.email("Contact", contact)
    rig.sf.state.update("Contact", contact, {"Email": "moved.elsewhere@example.com",
                                             "FirstName": "Moved"})
    await rig.final_state()  # also: no profile left under the old email (none unexpected)
    snapshot = rig.it.state.snapshot()
    assert old not in snapshot
    assert snapshot["moved.elsewhere@example.com"]["dataFields"]["sfContactId"] == contact


async def test_invalid_emails_are_dead_lettered_and_the_rest_of_the_batch_proceeds(
        rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory(flush={"linger_ms": 300})
    base = {"Company": "Nowhere", "Status": "Open - Not Contacted"}
    bad_format = rig.sf.state.create("Lead", {**base, "LastName": "Bad", "Email": "jane@x.c0m"})
    unknown_tld = rig.sf.state.create("Lead", {**base, "LastName": "Tld",
                                               "Email": "joe@example.zzz"})
    good = [rig.sf.state.create("Lead", {**base, "LastName": f"Good{n}",
                                         "Email": f"good{n}@example.com"}) for n in range(3)]
    state = await rig.final_state()
    dead = {d.record_id: d for d in state.dead_letters}
    assert set(dead) == {bad_format, unknown_tld}
    assert {d.reason for d in dead.values()} == {DeadLetterReason.INVALID_EMAIL}
    assert state.rejected_by_iterable == {unknown_tld}  # the mapper let it through, Iterable not
    for n, _ in enumerate(good):
        assert rig.profile(f"good{n}@example.com")["dataFields"]["lastName"] == f"Good{n}"


async def test_iterable_429_storm(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    rig.it.faults.fail_next(BULK_UPDATE, times=25, status=429)
    leads = rig.live_with_email("Lead")
    rig.sf.state.mass_update("Lead", leads, {"FirstName": "Storm"})
    rig.sf.state.update("Contact", rig.live_with_email("Contact")[0], {"FirstName": "Storm"})
    state = await rig.final_state()
    assert not rig.it.faults.pending()  # the whole storm was met
    assert rig.it.state.count("POST " + BULK_UPDATE, 429) == 25
    assert state.dead_letters == []


async def test_iterable_5xx_burst(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    rig.it.faults.fail_next(BULK_UPDATE, times=4, status=503)
    rig.it.faults.fail_next(BULK_UPDATE, times=3, status=500)
    rig.sf.state.mass_update("Contact", rig.live_with_email("Contact"), {"LastName": "Burst"})
    state = await rig.final_state()
    assert not rig.it.faults.pending()
    assert state.dead_letters == []


async def test_iterable_hang(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory(iterable={"timeout_s": 1.0})
    rig.it.faults.hang_next(BULK_UPDATE, times=2)
    lead = rig.live_with_email("Lead")[0]
    rig.sf.state.update("Lead", lead, {"FirstName": "Patience"})
    state = await rig.final_state()
    assert not rig.it.faults.pending()
    assert rig.profile(rig.email("Lead", lead))["dataFields"]["firstName"] == "Patience"
    assert state.dead_letters == []


async def test_salesforce_session_expiry_mid_stream(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    leads = rig.live_with_email("Lead")
    rig.sf.state.update("Lead", leads[0], {"FirstName": "Before"})
    await rig.caught_up()
    assert rig.sf.sessions.expire_all() >= 1
    grants = rig.sf.sessions.issued
    rig.sf.state.update("Lead", leads[1], {"FirstName": "After"})
    rig.sf.state.update("Contact", rig.live_with_email("Contact")[0], {"FirstName": "After"})
    await rig.final_state()
    assert rig.sf.sessions.issued > grants  # the service logged in again
    assert rig.profile(rig.email("Lead", leads[1]))["dataFields"]["firstName"] == "After"


async def test_unknown_cometd_client(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    leads = rig.live_with_email("Lead")
    rig.sf.state.update("Lead", leads[1], {"FirstName": "Stored"})
    await rig.caught_up()  # a replay id is stored: the resubscribe resumes from it
    handshakes = rig.sf.counters()["cometd"]["handshakes"]
    assert rig.sf.forget_cometd_clients() >= 1
    lead = leads[0]
    rig.sf.state.update("Lead", lead, {"FirstName": "Rehandshaked"})
    await rig.final_state()
    assert rig.profile(rig.email("Lead", lead))["dataFields"]["firstName"] == "Rehandshaked"
    assert rig.sf.counters()["cometd"]["handshakes"] > handshakes


async def test_replay_id_expired_during_downtime(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    rig.sf.state.update("Lead", rig.live_with_email("Lead")[0], {"FirstName": "Stored"})
    await rig.caught_up()
    assert await rig.service.stop() == 0
    lead, contact = rig.live_with_email("Lead")[1], rig.live_with_email("Contact")[0]
    rig.sf.state.update("Lead", lead, {"FirstName": "WhileDown"})
    rig.sf.state.update("Contact", contact, {"Email": "down.time@example.com"})
    created = rig.sf.state.create("Lead", {"LastName": "Downtime", "Company": "Gone",
                                           "Email": "created.down@example.com",
                                           "Status": "Open - Not Contacted"})
    rig.sf.bus.purge()  # the stored replay id fell out of retention
    await rig.service.start()
    await rig.final_state()
    assert rig.profile(rig.email("Lead", lead))["dataFields"]["firstName"] == "WhileDown"
    assert rig.profile("down.time@example.com")["dataFields"]["sfContactId"] == contact
    assert rig.profile("created.down@example.com")["dataFields"]["sfLeadId"] == created


async def test_gap_events_requeue_their_records(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    contacts = rig.live_with_email("Contact")[:3]
    for contact in contacts:
        silent_update(rig.sf, "Contact", contact, {"FirstName": "Gapped"})
    rig.sf.publish_gap("Contact", "GAP_UPDATE", contacts)
    await rig.final_state()
    for contact in contacts:
        assert rig.profile(rig.email("Contact", contact))["dataFields"]["firstName"] == "Gapped"


async def test_gap_overflow_reconciles_the_object(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    leads = rig.live_with_email("Lead")
    rig.sf.state.overflow_changes = 3  # a transaction past 3 changes overflows
    published = rig.sf.bus.latest_replay_id
    rig.sf.state.mass_update("Lead", leads, {"LastName": "Overflowed"})
    events = [e for e in rig.sf.bus.events_after(published)]
    assert any(b'"GAP_OVERFLOW"' in e.data_json for e in events)
    await rig.final_state()
    for lead in leads:
        assert rig.profile(rig.email("Lead", lead))["dataFields"]["lastName"] == "Overflowed"


async def test_salesforce_query_faults_are_retried(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    query_path = f"/services/data/v{rig.sf.config.api_version}/query"  # query and queryAll
    rig.sf.faults.fail_next(query_path, 3, status=503)
    rig.sf.faults.drop_next(query_path, 1)
    lead = rig.live_with_email("Lead")[0]
    rig.sf.state.update("Lead", lead, {"FirstName": "Persistent"})
    state = await rig.final_state()
    assert all(rule.remaining == 0 for rule in rig.sf.faults.rules)
    assert rig.profile(rig.email("Lead", lead))["dataFields"]["firstName"] == "Persistent"
    assert state.dead_letters == []


async def test_iterable_connection_drops(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    rig.it.faults.drop_next(BULK_UPDATE, times=3)
    contacts = rig.live_with_email("Contact")[:4]
    rig.sf.state.mass_update("Contact", contacts, {"FirstName": "Dropped"})
    state = await rig.final_state()
    assert not rig.it.faults.pending()
    assert state.dead_letters == []


async def test_email_change_then_delete_while_down_flags_the_moved_profile(
        rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    assert await rig.service.stop() == 0
    contact = rig.live_with_email("Contact")[0]
    rig.sf.state.update("Contact", contact, {"Email": "moved.then.deleted@example.com"})
    rig.sf.state.delete("Contact", contact)
    await rig.service.start()
    await rig.final_state(timeout_s=2.0)  # one profile, under the last email, flagged


async def test_created_and_deleted_while_down_leaves_no_profile(rig_factory: RigFactory) -> None:
    rig: Rig = await rig_factory()
    assert await rig.service.stop() == 0
    short_lived = rig.sf.state.create("Lead", {"LastName": "Ephemeral", "Company": "Gone",
                                               "Email": "ephemeral@example.com",
                                               "Status": "Open - Not Contacted"})
    rig.sf.state.delete("Lead", short_lived)
    await rig.service.start()
    state = await rig.final_state()
    assert "ephemeral@example.com" not in rig.it.state.snapshot()
    assert state.never_synced_deleted == {short_lived}  # nothing to flag: never written


async def test_change_between_backfill_and_the_first_start(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
        tmp_path: Path) -> None:
    config = build_config(sf_emulator, iterable_emulator, tmp_path, ingest=FAST_INGEST)
    await backfill(config)
    lead = sf_emulator.select_ids("Lead", "IsDeleted = false AND Email != null "
                                          "AND IsConverted = false")[0]
    sf_emulator.state.update("Lead", lead, {"FirstName": "BetweenRuns"})
    service = InProcessService(config)
    await service.start()
    store = await Store.open(config.queue.path)
    try:
        await wait_caught_up(store, sf_emulator, config, CATCH_UP_S)
        async with FinalStateChecker.open(config, iterable_emulator) as checker:
            await checker.assert_consistent(timeout_s=3.0)
    finally:
        await store.close()
        await service.abandon()


@pytest.mark.parametrize("change", ["email_change", "delete"])
async def test_converted_contact_changes_before_its_first_sync(
        rig_factory: RigFactory, change: str) -> None:
    rig: Rig = await rig_factory()
    assert await rig.service.stop() == 0
    lead = rig.live_with_email("Lead")[0]
    contact = rig.sf.state.convert_lead(lead)["contactId"]
    if change == "delete":
        rig.sf.state.delete("Contact", contact)
    else:
        rig.sf.state.update("Contact", contact, {"Email": "converted.moved@example.com"})
    await rig.service.start()
    await rig.final_state(timeout_s=2.0)  # the Lead's profile moved, or flagged
