"""Flusher against both emulators over real HTTP and a real SQLite queue: the real-time path."""

from __future__ import annotations

from typing import Any

import pytest

from streamsync.core.ids import to_18
from tests.conftest import SyncRig


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
    assert rig.metrics.commit_to_iterable_s.collect()[0].samples[-1].value > 0  # sum observed

    rig.sf.state.update("Contact", new_id, {"FirstName": "Augusta"})
    await rig.enqueue("Contact", [new_id])
    assert (await rig.drain()).synced == 1
    assert rig.profiles()["ada@example.com"]["dataFields"]["firstName"] == "Augusta"

    before = rig.it.state.count("bulkUpdate")
    await rig.enqueue("Contact", [new_id])
    result = await rig.drain()
    assert (result.synced, result.skipped) == (0, 1)
    assert rig.it.state.count("bulkUpdate") == before  # nothing sent for an unchanged record
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
