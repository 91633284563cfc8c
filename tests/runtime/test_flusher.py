"""Flusher against both emulators over real HTTP and a real SQLite queue: the real-time path."""

from __future__ import annotations

from typing import Any

import pytest

from streamsync.core.ids import to_18
from streamsync.errors import AuthError
from tests.conftest import SyncRig

BULK = "POST /api/users/bulkUpdate"


def contact_ids(rig: SyncRig) -> list[str]:
    return [to_18(i) for i in rig.sf.select_ids("Contact")]


def expected_contact(rig: SyncRig, sf_id: str) -> dict[str, Any]:
    """What the Contact implies on its Iterable profile (the fields the tests look at)."""
    rec = rig.sf.state.record("Contact", sf_id)
    assert rec is not None
    account = rig.sf.state.record("Account", rec["AccountId"]) if rec["AccountId"] else None
    return {"email": rec["Email"].lower(), "firstName": rec["FirstName"],
            "lastName": rec["LastName"], "company": account["Name"] if account else None}


def assert_profile_matches(rig: SyncRig, sf_id: str) -> None:
    want = expected_contact(rig, sf_id)
    profile = rig.profiles()[want["email"]]
    data = profile["dataFields"]
    assert data["sfContactId"] == sf_id
    assert data["firstName"] == want["firstName"]
    assert data["lastName"] == want["lastName"]
    assert (data.get("Company") or {}).get("Name") == want["company"]


async def test_create_update_unchanged(sync_rig: SyncRig) -> None:
    rig = sync_rig
    new_id = rig.sf.state.create("Contact", {"LastName": "Lovelace", "FirstName": "Ada",
                                             "Email": "Ada@Example.com"})
    await rig.enqueue("Contact", [new_id], commit_ts_ms=int(rig.clock() * 1000) - 500)
    result = await rig.drain()
    assert (result.synced, result.dead) == (1, 0)
    assert_profile_matches(rig, to_18(new_id))
    registry = rig.metrics.registry
    assert registry.get_sample_value("streamsync_commit_to_iterable_seconds_count") == 1
    assert (registry.get_sample_value("streamsync_commit_to_iterable_seconds_sum") or 0) >= 0.5
    assert registry.get_sample_value("streamsync_records_synced_total",
                                     {"object": "Contact"}) == 1

    rig.sf.state.update("Contact", new_id, {"FirstName": "Augusta"})
    await rig.enqueue("Contact", [new_id])
    assert (await rig.drain()).synced == 1
    assert rig.profiles()["ada@example.com"]["dataFields"]["firstName"] == "Augusta"

    before = rig.it.state.count(BULK)
    assert before == 2
    await rig.enqueue("Contact", [new_id])
    result = await rig.drain()
    assert (result.synced, result.skipped) == (0, 1)
    assert rig.it.state.count(BULK) == before  # nothing sent for an unchanged record
    assert (await rig.store.queue_stats(rig.clock())).depth == 0


async def test_all_seeded_contacts_reach_iterable(sync_rig: SyncRig) -> None:
    rig = sync_rig
    ids = contact_ids(rig)
    await rig.enqueue("Contact", ids)
    result = await rig.drain()
    assert result.synced + result.dead == len(ids)
    dead = {d.record_id for d in await rig.store.dead_letters()}
    for sf_id in ids:
        if sf_id not in dead:
            assert_profile_matches(rig, sf_id)


@pytest.mark.parametrize("policy", ["delete", "flag", "ignore"])
async def test_delete_and_undelete_follow_the_policy(make_config: Any, sync_rig: SyncRig,
                                                      policy: str) -> None:
    rig = sync_rig
    rig.config = make_config(rig.sf, rig.it, rig.store.path.parent,
                             objects={"Contact": {"delete_policy": policy}})
    rig.pipeline.config = rig.flusher.config = rig.config
    sf_id = rig.sf.state.create("Contact", {"LastName": "Gone", "Email": "gone@example.com"})
    await rig.enqueue("Contact", [sf_id])
    await rig.drain()
    assert "gone@example.com" in rig.profiles()

    rig.sf.state.delete("Contact", sf_id)
    await rig.enqueue("Contact", [sf_id])
    result = await rig.drain()
    assert result.dead == 0 and result.retried == 0
    profiles = rig.profiles()
    if policy == "delete":
        assert "gone@example.com" not in profiles
        assert await rig.store.identities("Contact", [to_18(sf_id)]) == {}
    elif policy == "flag":
        assert profiles["gone@example.com"]["dataFields"]["salesforceDeleted"] is True
    else:
        assert "salesforceDeleted" not in profiles["gone@example.com"]["dataFields"]

    rig.sf.state.undelete("Contact", sf_id)
    await rig.enqueue("Contact", [sf_id])
    await rig.drain()
    data = rig.profiles()["gone@example.com"]["dataFields"]
    assert data["lastName"] == "Gone"
    if policy == "flag":
        assert data["salesforceDeleted"] is False


def _new_contacts(rig: SyncRig, n: int, prefix: str, **values: Any) -> list[str]:
    return [to_18(rig.sf.state.create("Contact", {"LastName": f"{prefix}{i}",
                                                  "Email": f"{prefix}{i}@example.com",
                                                  **values}))
            for i in range(n)]


async def test_invalid_and_forgotten_emails_are_dead_lettered_alone(sync_rig: SyncRig) -> None:
    rig = sync_rig
    ids = _new_contacts(rig, 12, "member")
    table = rig.sf.state.tables["Contact"]
    table.rows[ids[3]][table.obj.slot("Email")] = "not an email"  # bypasses Salesforce checks
    rig.it.project.forgotten_emails.add("member7@example.com")  # Iterable refuses this one
    await rig.enqueue("Contact", ids)
    result = await rig.drain()
    assert (result.synced, result.dead, result.retried) == (10, 2, 0)
    dead = {d.record_id: d for d in await rig.store.dead_letters()}
    assert set(dead) == {ids[3], ids[7]}
    assert dead[ids[3]].reason == "invalid_email"
    assert dead[ids[7]].reason == "forgotten"
    assert set(rig.profiles()) == {f"member{i}@example.com" for i in range(12)} - {
        "member3@example.com", "member7@example.com"}
    assert (await rig.store.queue_stats(rig.clock())).depth == 0


@pytest.mark.iterable(type_mismatch="batch")
async def test_whole_batch_type_mismatch_isolates_only_the_offenders(sync_rig: SyncRig) -> None:
    rig = sync_rig
    # leadSource becomes a date field in Iterable, so a picklist text value no longer fits.
    await rig.clients.iterable.update_user({"email": "seed@example.com",
                                            "dataFields": {"leadSource": "2020-01-01"}})
    fine = _new_contacts(rig, 10, "fine")
    bad = _new_contacts(rig, 2, "bad", LeadSource="Web")
    await rig.enqueue("Contact", fine[:5] + bad[:1] + fine[5:] + bad[1:])
    result = await rig.drain()
    assert (result.synced, result.dead, result.retried) == (10, 2, 0)
    dead = {d.record_id: d for d in await rig.store.dead_letters()}
    assert set(dead) == set(bad)
    assert {d.reason for d in dead.values()} == {"type_mismatch"}
    assert "leadSource" in dead[bad[0]].last_error
    profiles = rig.profiles()
    assert all(f"fine{i}@example.com" in profiles for i in range(10))
    assert rig.it.state.count(BULK, 400) >= 1


async def test_account_rename_resyncs_every_contact_across_pages(sync_rig: SyncRig) -> None:
    rig = sync_rig
    rig.flusher.fanout_page = 7
    account = to_18(rig.sf.state.create("Account", {"Name": "Old Name"}))
    ids = _new_contacts(rig, 20, "emp", AccountId=account)
    await rig.enqueue("Contact", ids)
    await rig.drain()
    assert rig.profiles()["emp0@example.com"]["dataFields"]["Company"]["Name"] == "Old Name"

    rig.sf.state.update("Account", account, {"Name": "New Name"})
    await rig.enqueue("Account", [account])
    result = await rig.drain()
    assert result.fanned_out == 20
    assert result.synced == 20
    profiles = rig.profiles()
    assert {profiles[f"emp{i}@example.com"]["dataFields"]["Company"]["Name"]
            for i in range(20)} == {"New Name"}
    assert (await rig.store.queue_stats(rig.clock())).depth == 0  # the Account row was acked


async def test_change_while_in_flight_is_not_lost(sync_rig: SyncRig) -> None:
    rig = sync_rig
    [sf_id] = _new_contacts(rig, 1, "moving", FirstName="Before")
    real = rig.pipeline.sync_records
    calls = 0

    async def change_mid_flight(object_name: str, records: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # after the SOQL read, before Iterable confirms: a new CDC event
            rig.sf.state.update("Contact", sf_id, {"FirstName": "After"})
            await rig.enqueue("Contact", [sf_id])
        return await real(object_name, records, **kw)

    rig.pipeline.sync_records = change_mid_flight  # type: ignore[method-assign]
    await rig.enqueue("Contact", [sf_id])
    first = await rig.flusher.flush_once()
    assert first.synced == 1
    assert (await rig.store.queue_stats(rig.clock())).depth == 1  # the newer change stayed
    assert rig.profiles()["moving0@example.com"]["dataFields"]["firstName"] == "Before"
    await rig.drain()
    assert rig.profiles()["moving0@example.com"]["dataFields"]["firstName"] == "After"


@pytest.mark.parametrize("status", [429, 503])
async def test_rate_limit_storm_and_5xx_burst_are_retried_not_lost(sync_rig: SyncRig,
                                                                    status: int) -> None:
    rig = sync_rig
    ids = _new_contacts(rig, 6, "storm")
    rig.it.faults.fail_next("/api/users/bulkUpdate", times=5, status=status,
                            headers={"Retry-After": "0"} if status == 429 else None)
    await rig.enqueue("Contact", ids)
    result = await rig.drain()
    assert result.retried == 6  # the first three attempts failed: back to the queue
    assert (result.synced, result.dead) == (6, 0)
    assert all(f"storm{i}@example.com" in rig.profiles() for i in range(6))
    assert rig.it.state.count(BULK, status) == 5


@pytest.mark.sync_config(iterable={"timeout_s": 0.3})
async def test_iterable_hang_times_out_and_is_retried(sync_rig: SyncRig) -> None:
    rig = sync_rig
    ids = _new_contacts(rig, 3, "hang")
    rig.it.faults.hang_next("/api/users/bulkUpdate", times=2)
    await rig.enqueue("Contact", ids)
    result = await rig.drain()
    assert (result.synced, result.dead) == (3, 0)
    assert all(f"hang{i}@example.com" in rig.profiles() for i in range(3))


@pytest.mark.sync_config(queue={"max_attempts": 3})
async def test_a_batch_that_trips_a_bug_is_retried_then_dead_lettered_alone(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    [good] = _new_contacts(rig, 1, "good")
    lead = to_18(rig.sf.state.create("Lead", {"LastName": "Bug", "Company": "Co",
                                              "Email": "bug@example.com"}))
    real = rig.pipeline.sync_records

    async def broken_for_leads(object_name: str, records: Any, **kw: Any) -> Any:
        if object_name == "Lead":
            raise ValueError("mapper bug")
        return await real(object_name, records, **kw)

    rig.pipeline.sync_records = broken_for_leads  # type: ignore[method-assign]
    await rig.enqueue("Lead", [lead])
    await rig.enqueue("Contact", [good])
    result = await rig.drain()
    assert result.synced == 1
    [dead] = await rig.store.dead_letters()
    assert (dead.record_id, dead.reason) == (lead, "retries_exhausted")
    assert "mapper bug" in dead.last_error


async def test_a_fatal_error_releases_the_leases(sync_rig: SyncRig) -> None:
    rig = sync_rig
    ids = _new_contacts(rig, 2, "fatal")

    async def refused(object_name: str, records: Any, **kw: Any) -> Any:
        raise AuthError("iterable: the API key was refused")

    rig.pipeline.sync_records = refused  # type: ignore[method-assign]
    await rig.enqueue("Contact", ids)
    with pytest.raises(AuthError):
        await rig.flusher.flush_once()
    stats = await rig.store.queue_stats(rig.clock())
    assert (stats.depth, stats.leased, stats.due) == (2, 0, 2)


async def test_a_record_salesforce_no_longer_returns_follows_the_delete_policy(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    [sf_id] = _new_contacts(rig, 1, "purged")
    await rig.enqueue("Contact", [sf_id])
    await rig.drain()
    table = rig.sf.state.tables["Contact"]
    table.remove(sf_id)  # purged from the recycle bin: queryAll does not return it any more
    await rig.enqueue("Contact", [sf_id])
    result = await rig.drain()
    assert (result.synced, result.dead) == (1, 0)
    assert rig.profiles()["purged0@example.com"]["dataFields"]["salesforceDeleted"] is True
