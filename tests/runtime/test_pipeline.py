"""SyncPipeline and Flusher: email changes, duplicate identifiers, lead conversion, filters,
shared profiles and shutdown, against both emulators over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streamsync.adapters.store import IdentityHandover, IdentityUpdate
from streamsync.core.ids import to_18
from tests.conftest import SyncRig

UPDATE_EMAIL = "POST /api/users/updateEmail"


def _contact(rig: SyncRig, email: str, **values: Any) -> str:
    return to_18(rig.sf.state.create("Contact", {"LastName": "Person", "Email": email,
                                                 **values}))


async def test_email_change_keeps_the_profile_in_email_projects(sync_rig: SyncRig) -> None:
    rig = sync_rig
    sf_id = _contact(rig, "old@example.com", FirstName="Grace")
    await rig.enqueue("Contact", [sf_id])
    await rig.drain()
    before = rig.profiles()
    rig.sf.state.update("Contact", sf_id, {"Email": "New@Example.com", "FirstName": "G."})
    await rig.enqueue("Contact", [sf_id])
    result = await rig.drain()
    assert (result.synced, result.dead) == (1, 0)
    after = rig.profiles()
    assert "old@example.com" not in after and len(after) == len(before)
    assert after["new@example.com"]["dataFields"]["firstName"] == "G."
    assert rig.it.state.count(UPDATE_EMAIL, 200) == 1
    outcomes = [h["outcome"] for h in rig.it.state.history("new@example.com")]
    assert outcomes == ["email changed", "updated"]  # the old profile, moved then updated
    ident = (await rig.store.identities("Contact", [sf_id]))[sf_id]
    assert ident.iterable_email == "new@example.com"


@pytest.mark.iterable(project_type="hybrid")
@pytest.mark.sync_config(objects={"Contact": {"identity": "both"}})
async def test_email_change_in_hybrid_projects_goes_by_user_id(sync_rig: SyncRig) -> None:
    rig = sync_rig
    sf_id = _contact(rig, "before@example.com")
    await rig.enqueue("Contact", [sf_id])
    await rig.drain()
    rig.sf.state.update("Contact", sf_id, {"Email": "after@example.com"})
    await rig.enqueue("Contact", [sf_id])
    result = await rig.drain()
    assert (result.synced, result.dead) == (1, 0)
    profiles = rig.profiles()
    assert "before@example.com" not in profiles
    assert profiles["after@example.com"]["userId"] == sf_id
    assert rig.it.state.count(UPDATE_EMAIL) == 0


async def test_email_change_and_delete_in_one_flush_flag_the_moved_profile(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    sf_id = _contact(rig, "before.delete@example.com")
    await rig.enqueue("Contact", [sf_id])
    await rig.drain()
    rig.sf.state.update("Contact", sf_id, {"Email": "Last.Email@example.com"})
    rig.sf.state.delete("Contact", sf_id)
    await rig.enqueue("Contact", [sf_id])  # both changes reach one flush
    result = await rig.drain()
    assert (result.synced, result.dead) == (1, 0)
    profiles = rig.profiles()
    assert "before.delete@example.com" not in profiles  # moved, then flagged
    assert profiles["last.email@example.com"]["dataFields"]["salesforceDeleted"] is True
    assert rig.it.state.count(UPDATE_EMAIL, 200) == 1
    ident = (await rig.store.identities("Contact", [sf_id]))[sf_id]
    assert ident.iterable_email == "last.email@example.com"


async def test_a_deleted_records_last_email_held_by_another_record_is_not_taken(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    mine = _contact(rig, "mine@example.com")
    theirs = _contact(rig, "theirs@example.com")
    await rig.enqueue("Contact", [mine, theirs])
    await rig.drain()
    rig.sf.state.update("Contact", mine, {"Email": "theirs@example.com"})
    rig.sf.state.delete("Contact", mine)
    await rig.enqueue("Contact", [mine])
    result = await rig.drain()
    assert (result.synced, result.dead) == (1, 0)
    profiles = rig.profiles()
    assert profiles["mine@example.com"]["dataFields"]["salesforceDeleted"] is True
    assert profiles["theirs@example.com"]["dataFields"]["sfContactId"] == theirs
    assert profiles["theirs@example.com"]["dataFields"].get("salesforceDeleted") is not True
    assert rig.it.state.count(UPDATE_EMAIL) == 0


async def test_duplicate_emails_in_one_call_are_resolved_by_last_modified(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    first = _contact(rig, "shared@example.com", FirstName="First")
    second = _contact(rig, "Shared@example.com", FirstName="Second")
    rig.sf.state.update("Contact", first, {"Title": "touched later"})
    records = {i: rig.sf.state.record("Contact", i) for i in (first, second)}
    winner = max(records, key=lambda i: (str(records[i]["SystemModstamp"]), i))  # type: ignore
    loser = second if winner == first else first
    await rig.enqueue("Contact", [first, second])
    result = await rig.drain()
    assert (result.synced, result.skipped, result.dead) == (1, 1, 0)
    data = rig.profiles()["shared@example.com"]["dataFields"]
    assert data["sfContactId"] == winner
    assert set(await rig.store.identities("Contact", [first, second])) == {winner}
    assert loser not in {d.record_id for d in await rig.store.dead_letters()}


async def test_converted_lead_does_not_overwrite_its_contact(sync_rig: SyncRig) -> None:
    rig = sync_rig
    lead = to_18(rig.sf.state.create("Lead", {"LastName": "Hopper", "Company": "Navy",
                                              "Email": "grace@example.com",
                                              "Status": "Working - Contacted"}))
    await rig.enqueue("Lead", [lead])
    await rig.drain()
    assert rig.profiles()["grace@example.com"]["dataFields"]["sfLeadId"] == lead

    converted = rig.sf.state.convert_lead(lead)
    contact = to_18(converted["contactId"])
    await rig.enqueue("Contact", [contact])
    await rig.enqueue("Lead", [lead])  # the Lead's UPDATE arrives after the Contact's CREATE
    result = await rig.drain()
    assert result.dead == 0
    data = rig.profiles()["grace@example.com"]["dataFields"]
    assert data["sfContactId"] == contact
    assert data["leadStatus"] == "Working - Contacted"  # the converted Lead was not written
    assert await rig.store.identities("Lead", [lead]) == {}

    rig.sf.state.delete("Lead", lead)  # deleting the converted Lead leaves the profile alone
    await rig.enqueue("Lead", [lead])
    await rig.drain()
    assert "salesforceDeleted" not in rig.profiles()["grace@example.com"]["dataFields"] or \
        rig.profiles()["grace@example.com"]["dataFields"]["salesforceDeleted"] is False


async def _synced_then_converted(rig: SyncRig, email: str) -> tuple[str, str]:
    """A Lead synced to Iterable under `email`, then converted: (lead id, contact id)."""
    lead = to_18(rig.sf.state.create("Lead", {"LastName": "Lovelace", "Company": "Engines",
                                              "Email": email}))
    await rig.enqueue("Lead", [lead])
    await rig.drain()
    assert rig.profiles()[email]["dataFields"]["sfLeadId"] == lead
    return lead, to_18(rig.sf.state.convert_lead(lead)["contactId"])


async def test_converted_lead_hands_its_profile_to_a_contact_whose_email_changed(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    lead, contact = await _synced_then_converted(rig, "ada@example.com")
    rig.sf.state.update("Contact", contact, {"Email": "countess@example.com"})
    await rig.enqueue("Lead", [lead])  # the conversion is seen before the Contact's first sync
    rig.clock.advance(1.0)
    await rig.enqueue("Contact", [contact])
    result = await rig.drain()
    assert result.dead == 0
    profiles = rig.profiles()
    assert "ada@example.com" not in profiles  # one profile, moved: not a second one
    assert profiles["countess@example.com"]["dataFields"]["sfContactId"] == contact
    assert profiles["countess@example.com"]["dataFields"]["sfLeadId"] == lead  # its history
    assert rig.it.state.count(UPDATE_EMAIL, 200) == 1
    assert await rig.store.identities("Lead", [lead]) == {}
    ident = (await rig.store.identities("Contact", [contact]))[contact]
    assert ident.iterable_email == "countess@example.com" and ident.payload_hash


async def test_converted_lead_hands_its_profile_to_a_contact_deleted_before_its_first_sync(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    lead, contact = await _synced_then_converted(rig, "babbage@example.com")
    rig.sf.state.delete("Contact", contact)
    await rig.enqueue("Contact", [contact])  # the Contact's events are flushed first
    result = await rig.drain()  # it takes its Lead's identity (asked of Salesforce): flagged
    assert (result.synced, result.dead) == (1, 0)
    data = rig.profiles()["babbage@example.com"]["dataFields"]
    assert data["salesforceDeleted"] is True
    assert await rig.store.identities("Lead", [lead]) == {}
    assert set(await rig.store.identities("Contact", [contact])) == {contact}
    await rig.enqueue("Lead", [lead])  # the conversion seen later changes nothing
    result = await rig.drain()
    assert (result.skipped, result.dead) == (1, 0)
    assert rig.profiles()["babbage@example.com"]["dataFields"]["salesforceDeleted"] is True


async def test_contact_synced_before_its_lead_conversion_is_seen_moves_the_lead_profile(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    lead, contact = await _synced_then_converted(rig, "ada.first@example.com")
    rig.sf.state.update("Contact", contact, {"Email": "countess.first@example.com"})
    await rig.enqueue("Contact", [contact])  # the Contact's CREATE and UPDATE come first
    result = await rig.drain()
    assert (result.synced, result.dead) == (1, 0)
    profiles = rig.profiles()
    assert "ada.first@example.com" not in profiles  # moved, not left behind
    moved = profiles["countess.first@example.com"]["dataFields"]
    assert (moved["sfContactId"], moved["sfLeadId"]) == (contact, lead)
    assert rig.it.state.count(UPDATE_EMAIL, 200) == 1
    assert await rig.store.identities("Lead", [lead]) == {}
    await rig.enqueue("Lead", [lead])  # then the Lead's conversion UPDATE
    result = await rig.drain()
    assert (result.skipped, result.dead) == (1, 0)
    assert set(rig.profiles()) == set(profiles)
    ident = (await rig.store.identities("Contact", [contact]))[contact]
    assert ident.iterable_email == "countess.first@example.com"


async def test_a_contact_no_lead_was_converted_into_is_created_as_before(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    await _synced_then_converted(rig, "someone.else@example.com")
    contact = _contact(rig, "plain.new@example.com")
    await rig.enqueue("Contact", [contact])
    result = await rig.drain()
    assert (result.synced, result.dead) == (1, 0)
    assert rig.profiles()["plain.new@example.com"]["dataFields"]["sfContactId"] == contact
    assert "someone.else@example.com" in rig.profiles()  # the converted Lead's: untouched
    assert rig.it.state.count(UPDATE_EMAIL) == 0


async def test_hand_over_keeps_an_identity_the_target_already_has(sync_rig: SyncRig) -> None:
    store = sync_rig.store
    now = sync_rig.clock()
    await store.save_identities([IdentityUpdate("Lead", "00Q000000000001AAA", "a@x.com", None,
                                                "h1"),
                                 IdentityUpdate("Lead", "00Q000000000002AAA", "b@x.com", "u2",
                                                "h2"),
                                 IdentityUpdate("Contact", "003000000000002AAA", "c@x.com",
                                                None, "h3")], now)
    moves = [IdentityHandover("Lead", "00Q000000000001AAA", "Contact", "003000000000001AAA"),
             IdentityHandover("Lead", "00Q000000000002AAA", "Contact", "003000000000002AAA")]
    assert await store.hand_over_identities(moves, now) == moves[:1]
    assert await store.identities("Lead", ["00Q000000000001AAA", "00Q000000000002AAA"]) == {}
    contacts = await store.identities("Contact", ["003000000000001AAA", "003000000000002AAA"])
    taken, kept = contacts["003000000000001AAA"], contacts["003000000000002AAA"]
    assert (taken.iterable_email, taken.payload_hash) == ("a@x.com", None)
    assert (kept.iterable_email, kept.payload_hash) == ("c@x.com", "h3")
    leases = await store.lease("test", 10, 60.0, now + 1)
    assert [(lease.object_name, lease.record_id, lease.source) for lease in leases] == [
        ("Contact", "003000000000001AAA", "fanout")]


@pytest.mark.sync_config(objects={"Contact": {"delete_policy": "delete"}})
async def test_delete_spares_a_profile_another_record_still_maps_to(sync_rig: SyncRig) -> None:
    rig = sync_rig
    lead = to_18(rig.sf.state.create("Lead", {"LastName": "Twin", "Company": "Co",
                                              "Email": "twin@example.com"}))
    contact = _contact(rig, "twin@example.com")
    await rig.enqueue("Lead", [lead])
    await rig.drain()
    await rig.enqueue("Contact", [contact])
    await rig.drain()
    rig.sf.state.delete("Contact", contact)
    await rig.enqueue("Contact", [contact])
    result = await rig.drain()
    assert (result.skipped, result.dead) == (1, 0)
    assert "twin@example.com" in rig.profiles()
    assert await rig.store.identities("Contact", [contact]) == {}


@pytest.mark.sync_config(objects={"Contact": {"filter": "LeadSource != 'Partner'"}})
async def test_a_record_hidden_by_the_filter_is_not_treated_as_deleted(sync_rig: SyncRig) -> None:
    rig = sync_rig
    kept = _contact(rig, "kept@example.com")
    gone = _contact(rig, "gone@example.com")
    await rig.enqueue("Contact", [kept, gone])
    await rig.drain()
    rig.sf.state.update("Contact", kept, {"LeadSource": "Partner", "FirstName": "Hidden"})
    rig.sf.state.delete("Contact", gone)
    await rig.enqueue("Contact", [kept, gone])
    result = await rig.drain()
    assert (result.skipped, result.synced, result.dead) == (1, 1, 0)
    profiles = rig.profiles()
    assert "salesforceDeleted" not in profiles["kept@example.com"]["dataFields"] or \
        profiles["kept@example.com"]["dataFields"]["salesforceDeleted"] is False
    assert profiles["kept@example.com"]["dataFields"].get("firstName") is None  # not synced
    assert profiles["gone@example.com"]["dataFields"]["salesforceDeleted"] is True


async def test_sync_records_skips_unchanged_unless_forced(sync_rig: SyncRig) -> None:
    rig = sync_rig
    sf_id = _contact(rig, "force@example.com")
    records = [r async for r in rig.clients.salesforce.records(
        f"SELECT {', '.join(rig.pipeline.mappings['Contact'].soql_fields())} FROM Contact "
        f"WHERE Id = '{sf_id}'")]
    first = await rig.pipeline.sync_records("Contact", records, source="backfill")
    assert first.synced == [sf_id] and first.requests == 1
    again = await rig.pipeline.sync_records("Contact", records, source="backfill")
    assert again.skipped == [sf_id] and again.requests == 0
    forced = await rig.pipeline.sync_records("Contact", records, source="backfill", force=True)
    assert forced.synced == [sf_id] and forced.requests == 1


async def test_run_releases_in_flight_leases_on_stop(sync_rig: SyncRig) -> None:
    rig = sync_rig
    rig.flusher.shutdown_grace_s = 0.2
    ids = [_contact(rig, f"slow{i}@example.com") for i in range(3)]
    rig.it.faults.hang_next("/api/users/bulkUpdate", times=1)
    in_flight = asyncio.Event()
    real = rig.pipeline.sync_records

    async def announce(object_name: str, records: Any, **kw: Any) -> Any:
        in_flight.set()
        return await real(object_name, records, **kw)

    rig.pipeline.sync_records = announce  # type: ignore[method-assign]
    await rig.enqueue("Contact", ids)
    stop = asyncio.Event()
    runner = asyncio.create_task(rig.flusher.run(stop))
    await asyncio.wait_for(in_flight.wait(), 5.0)
    stop.set()
    await asyncio.wait_for(runner, 5.0)
    stats = await rig.store.queue_stats(rig.clock())
    assert (stats.depth, stats.leased, stats.due) == (3, 0, 3)  # given back, due at once
    rig.pipeline.sync_records = real  # type: ignore[method-assign]
    assert (await rig.drain()).synced == 3


@pytest.mark.sync_config(objects={"Lead": {"converted_precedence": "lead"}})
async def test_lead_precedence_keeps_the_lead_on_the_profile(sync_rig: SyncRig) -> None:
    rig = sync_rig
    lead = to_18(rig.sf.state.create("Lead", {"LastName": "Lamarr", "Company": "MGM",
                                              "Email": "hedy@example.com"}))
    await rig.enqueue("Lead", [lead])
    await rig.drain()
    contact = to_18(rig.sf.state.convert_lead(lead)["contactId"])
    await rig.enqueue("Contact", [contact])
    await rig.enqueue("Lead", [lead])
    result = await rig.drain()
    assert result.dead == 0
    data = rig.profiles()["hedy@example.com"]["dataFields"]
    assert data["sfLeadId"] == lead and "sfContactId" not in data
    assert data["leadStatus"] == "Closed - Converted"


async def test_expired_salesforce_session_is_renewed_inside_the_client(sync_rig: SyncRig) -> None:
    rig = sync_rig
    sf_id = _contact(rig, "session@example.com")
    await rig.enqueue("Contact", [sf_id])
    await rig.drain()
    assert rig.sf.sessions.expire_all() >= 1
    rig.sf.state.update("Contact", sf_id, {"FirstName": "Renewed"})
    await rig.enqueue("Contact", [sf_id])
    result = await rig.drain()
    assert (result.synced, result.retried, result.dead) == (1, 0, 0)
    assert rig.profiles()["session@example.com"]["dataFields"]["firstName"] == "Renewed"


@pytest.mark.iterable(project_type="hybrid")
async def test_email_change_in_hybrid_projects_without_user_id(sync_rig: SyncRig) -> None:
    rig = sync_rig
    sf_id = _contact(rig, "first@example.com", FirstName="One")
    await rig.enqueue("Contact", [sf_id])
    await rig.drain()
    rig.sf.state.update("Contact", sf_id, {"Email": "second@example.com", "FirstName": "Two"})
    await rig.enqueue("Contact", [sf_id])
    result = await rig.drain()
    assert (result.synced, result.dead) == (1, 0)
    profiles = rig.profiles()
    assert set(profiles) == {"second@example.com"}
    assert profiles["second@example.com"]["dataFields"]["firstName"] == "Two"
    assert rig.it.state.count(UPDATE_EMAIL) == 0
