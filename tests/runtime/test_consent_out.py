"""Salesforce → Iterable consent in the flusher (runtime/consent_out.py, consent_writer.py) on
both emulators: batching per group, failures kept in the queue, refusals dead-lettered, list
names resolved, backfill-style first sight, and the stored state written only after Iterable
confirmed."""

from __future__ import annotations

import asyncio

import pytest

from streamsync.adapters.iterable import UserFailure, parse_group_failures
from streamsync.errors import UnknownList
from streamsync.runtime.consent_writer import CONSENT_CONFIG, CONSENT_REJECTED, list_ids
from tests.conftest import SyncRig

MARKETING_EMAIL = 39581
PUT = "PUT /api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}"
CONSENT = {"objects": {"Lead": {"consent": {"unsubscribe_channel_ids": [MARKETING_EMAIL],
                                            "unsubscribe_message_type_ids": [48921]}},
                       "Contact": {}},
           "consent": {"batch_max_users": 2}}


def _leads(rig: SyncRig, n: int) -> list[str]:
    ids = rig.sf.select_ids("Lead", "IsDeleted = false AND Email != null AND IsConverted = false",
                            n)
    assert len(ids) == n
    return ids


def _email(rig: SyncRig, lead: str) -> str:
    record = rig.sf.state.record("Lead", lead)
    assert record is not None
    return str(record["Email"]).lower()


def _unsubscribed(rig: SyncRig, lead: str) -> list[int]:
    rig.it.flush()
    project = rig.it.project
    profile = project.by_email.get(_email(rig, lead))
    assert profile is not None
    return list(profile.subscriptions().unsubscribed_channel_ids)


@pytest.mark.salesforce(seed_leads=8)
@pytest.mark.sync_config(**CONSENT)
async def test_opt_outs_go_in_batches_per_group_and_are_stored_after_iterable_confirmed(
        sync_rig: SyncRig) -> None:
    leads = _leads(sync_rig, 5)
    for lead in leads:
        sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    await sync_rig.enqueue("Lead", leads)
    before = sync_rig.it.state.writes()["calls"].get(PUT, 0)
    await sync_rig.drain()
    # 5 users, 2 per call, 2 groups: 3 calls per group.
    assert sync_rig.it.state.writes()["calls"].get(PUT, 0) - before == 6
    for lead in leads:
        assert MARKETING_EMAIL in _unsubscribed(sync_rig, lead)
    stored = await sync_rig.store.consent_states("Lead", leads)
    assert {s.opted_out for s in stored.values()} == {True} and len(stored) == 5
    # Re-reading the same state writes nothing more.
    await sync_rig.enqueue("Lead", leads)
    await sync_rig.drain()
    assert sync_rig.it.state.writes()["calls"].get(PUT, 0) - before == 6


@pytest.mark.salesforce(seed_leads=4)
@pytest.mark.sync_config(**CONSENT)
async def test_a_failing_subscription_call_keeps_the_change_queued_until_it_goes_through(
        sync_rig: SyncRig) -> None:
    lead = _leads(sync_rig, 1)[0]
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    sync_rig.it.faults.fail_next("/api/subscriptions/*", times=20, status=503)
    await sync_rig.enqueue("Lead", [lead])
    step = await sync_rig.flusher.flush_once()
    assert (step.synced, step.retried) == (0, 1)
    assert (await sync_rig.store.queue_stats(sync_rig.clock())).depth == 1
    assert await sync_rig.store.consent_states("Lead", [lead]) == {}  # not before Iterable
    assert MARKETING_EMAIL not in _unsubscribed(sync_rig, lead)
    sync_rig.it.faults.clear()
    await sync_rig.drain()
    assert MARKETING_EMAIL in _unsubscribed(sync_rig, lead)
    assert (await sync_rig.store.consent_states("Lead", [lead]))[lead].opted_out is True


@pytest.mark.salesforce(seed_leads=4)
@pytest.mark.sync_config(objects={"Lead": {"consent": {"unsubscribe_channel_ids": [999]}},
                                  "Contact": {}})
async def test_a_refused_group_dead_letters_its_users_with_the_reason(sync_rig: SyncRig) -> None:
    lead = _leads(sync_rig, 1)[0]
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    await sync_rig.enqueue("Lead", [lead])
    await sync_rig.drain()
    [dead] = await sync_rig.store.dead_letters()
    assert (dead.record_id, dead.reason) == (lead, CONSENT_REJECTED)
    assert "messageChannel 999" in dead.last_error


@pytest.mark.salesforce(seed_leads=4)
@pytest.mark.sync_config(objects={"Lead": {"consent": {"remove_from_lists": ["No such list"]}},
                                  "Contact": {}})
async def test_an_unknown_list_name_dead_letters_with_a_hint(sync_rig: SyncRig) -> None:
    lead = _leads(sync_rig, 1)[0]
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    await sync_rig.enqueue("Lead", [lead])
    await sync_rig.drain()
    [dead] = await sync_rig.store.dead_letters()
    assert dead.reason == CONSENT_CONFIG and "name it by id" in dead.last_error


@pytest.mark.salesforce(seed_leads=6)
@pytest.mark.sync_config(**CONSENT)
async def test_first_sight_unsubscribes_opted_out_records_only(sync_rig: SyncRig) -> None:
    out, kept = _leads(sync_rig, 2)
    sync_rig.sf.state.update("Lead", out, {"HasOptedOutOfEmail": True})
    sync_rig.sf.state.update("Lead", kept, {"HasOptedOutOfEmail": False})
    await sync_rig.enqueue("Lead", [out, kept])
    await sync_rig.drain()
    assert MARKETING_EMAIL in _unsubscribed(sync_rig, out)
    assert _unsubscribed(sync_rig, kept) == []
    assert list(await sync_rig.store.consent_states("Lead", [out, kept])) == [out]


def test_list_names_resolve_to_exactly_one_list() -> None:
    lists = [{"id": 1, "name": "Customers"}, {"id": 2, "name": "Twice"},
             {"id": 3, "name": "twice "}, {"id": True, "name": "Odd"}]
    assert list_ids(["customers", 7, 1], lists) == (1, 7)
    with pytest.raises(UnknownList, match="2 Iterable lists"):
        list_ids(["Twice"], lists)
    with pytest.raises(UnknownList, match="no Iterable list"):
        list_ids(["Odd"], lists)


def test_group_reply_failures_are_read_from_params() -> None:
    body = {"msg": "", "code": "Success",
            "params": {"notFoundEmails": ["a@x.com"], "invalidUserIds": ["u1"], "other": 3}}
    assert parse_group_failures(body) == (UserFailure("a@x.com", "email", "not_found"),
                                          UserFailure("u1", "userId", "invalid_user_id"))
    assert parse_group_failures({"code": "Success", "params": None}) == ()


@pytest.mark.salesforce(seed_leads=4)
@pytest.mark.iterable(project_type="userId")
@pytest.mark.sync_config(objects={
    "Lead": {"identity": "userId", "consent": {"unsubscribe_channel_ids": [MARKETING_EMAIL]}},
    "Contact": {"identity": "userId"}})
async def test_a_user_id_project_is_unsubscribed_by_user_id(sync_rig: SyncRig) -> None:
    lead = _leads(sync_rig, 1)[0]
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    await sync_rig.enqueue("Lead", [lead])
    await sync_rig.drain()
    sync_rig.it.flush()
    profile = sync_rig.it.project.get_by_user_id(lead)
    assert profile is not None
    assert profile.subscriptions().unsubscribed_channel_ids == [MARKETING_EMAIL]
    assert (await sync_rig.store.consent_states("Lead", [lead]))[lead].opted_out is True


BULK = "POST /api/users/bulkUpdate"
ONE_GROUP = {"objects": {"Lead": {"consent": {"unsubscribe_channel_ids": [MARKETING_EMAIL]}},
                         "Contact": {}}}


def _calls(rig: SyncRig, endpoint: str) -> int:
    return rig.it.state.writes()["calls"].get(endpoint, 0)


async def _synced_once(rig: SyncRig, n: int) -> list[str]:
    """`n` Leads whose profiles (and identities) exist, as after their first sync."""
    leads = _leads(rig, n)
    await rig.enqueue("Lead", leads)
    await rig.drain()
    return leads


@pytest.mark.salesforce(seed_leads=4)
@pytest.mark.sync_config(**ONE_GROUP)
async def test_a_known_users_opt_out_is_written_while_its_profile_write_is_under_way(
        sync_rig: SyncRig) -> None:
    lead = (await _synced_once(sync_rig, 1))[0]
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True, "FirstName": "Early"})
    await sync_rig.enqueue("Lead", [lead])
    bulk, puts = _calls(sync_rig, BULK), _calls(sync_rig, PUT)
    sync_rig.it.faults.slow_next("/api/users/bulkUpdate", delay_s=2.0)
    flush = asyncio.create_task(sync_rig.flusher.flush_once())
    while not flush.done() and _calls(sync_rig, PUT) == puts:
        await asyncio.sleep(0.01)
    # The subscription call went through while the profile write still waited on Iterable.
    assert (_calls(sync_rig, PUT), flush.done(), _calls(sync_rig, BULK)) == (puts + 1, False,
                                                                            bulk)
    step = await flush
    assert (step.synced, _calls(sync_rig, BULK)) == (1, bulk + 1)
    assert MARKETING_EMAIL in _unsubscribed(sync_rig, lead)
    assert (await sync_rig.store.consent_states("Lead", [lead]))[lead].opted_out is True


@pytest.mark.salesforce(seed_leads=4)
@pytest.mark.sync_config(**ONE_GROUP)
async def test_an_opt_out_with_an_email_change_reaches_the_moved_profile(
        sync_rig: SyncRig) -> None:
    lead = (await _synced_once(sync_rig, 1))[0]
    old = _email(sync_rig, lead)
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True,
                                            "Email": "moved.optout@example.com"})
    await sync_rig.enqueue("Lead", [lead])
    # A slow move: a consent call sent before it returned would find no profile to change.
    sync_rig.it.faults.slow_next("/api/users/updateEmail", delay_s=0.5)
    step = await sync_rig.drain()
    assert (step.synced, step.dead, await sync_rig.store.dead_letters()) == (1, 0, [])
    profiles = sync_rig.profiles()
    assert old not in profiles  # moved by updateEmail, not created anew by the consent call
    assert MARKETING_EMAIL in _unsubscribed(sync_rig, lead)


@pytest.mark.salesforce(seed_leads=4)
@pytest.mark.sync_config(**ONE_GROUP)
async def test_a_failed_profile_write_keeps_the_record_queued_and_the_confirmed_consent(
        sync_rig: SyncRig) -> None:
    lead = (await _synced_once(sync_rig, 1))[0]
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True, "FirstName": "Again"})
    await sync_rig.enqueue("Lead", [lead])
    puts = _calls(sync_rig, PUT)
    sync_rig.it.faults.fail_next("/api/users/bulkUpdate", times=20, status=503)
    step = await sync_rig.flusher.flush_once()
    assert (step.synced, step.retried) == (0, 1)
    assert (await sync_rig.store.queue_stats(sync_rig.clock())).depth == 1
    # Iterable confirmed the unsubscribe: stored, so the retry does not send it again.
    assert MARKETING_EMAIL in _unsubscribed(sync_rig, lead)
    assert (await sync_rig.store.consent_states("Lead", [lead]))[lead].opted_out is True
    sync_rig.it.faults.clear()
    await sync_rig.drain()
    assert _calls(sync_rig, PUT) == puts + 1
    assert sync_rig.it.state.count(BULK, 200) >= 2
