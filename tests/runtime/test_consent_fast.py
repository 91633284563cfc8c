"""The consent fast path (runtime/consent_fast.py) on both emulators and a real store: an
opt-out's CDC event unsubscribes in Iterable with no Salesforce read, exactly one subscription
write happens whichever of the fast path and the pipeline comes first, and every case the event
alone does not settle, or whose identity may be stale, is left to the pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streamsync.adapters.store import Failure, QueueInput, StoreAPI
from streamsync.core.events import parse_event
from streamsync.models import ChangeEvent
from streamsync.runtime.consent_fast import ConsentFastPath, OptOutHint
from streamsync.runtime.generations import RecordGate
from tests.conftest import SyncRig

MARKETING_EMAIL = 39581
PUT = "PUT /api/subscriptions/{subscriptionGroup}/{subscriptionGroupId}"
QUERY_PATH = "/services/data/v66.0/query"
ONE_GROUP = {"objects": {"Lead": {"consent": {"unsubscribe_channel_ids": [MARKETING_EMAIL]}},
                         "Contact": {}}}
pytestmark = [pytest.mark.salesforce(seed_leads=6), pytest.mark.sync_config(**ONE_GROUP)]


def _fast(rig: SyncRig) -> ConsentFastPath:
    return rig.pipeline.consent_fast


def _puts(rig: SyncRig) -> int:
    return rig.it.state.writes()["calls"].get(PUT, 0)


def _queries(rig: SyncRig) -> int:
    return int(rig.sf.state.usage.by_kind.get("query", 0))


def _email(rig: SyncRig, lead: str) -> str:
    record = rig.sf.state.record("Lead", lead)
    assert record is not None
    return str(record["Email"]).lower()


def _unsubscribed(rig: SyncRig, email: str) -> bool | None:
    """Whether Iterable's user `email` is out of the channel (None: no such user)."""
    rig.it.flush()
    profile = rig.it.project.by_email.get(email)
    if profile is None:
        return None
    return MARKETING_EMAIL in profile.subscriptions().unsubscribed_channel_ids


def _last_event(rig: SyncRig) -> tuple[ChangeEvent, dict[str, Any]]:
    """The emulator's latest CDC event as CometD delivers it, parsed as ingest parses it."""
    message = {"channel": "/data/LeadChangeEvent",
               "data": {"payload": rig.sf.state.event_log[-1], "event": {"replayId": 1}}}
    return parse_event(message, ["Lead", "Contact"]), message


async def _ingest(rig: SyncRig, event: ChangeEvent, message: dict[str, Any]
                  ) -> OptOutHint | None:
    """What ingest does with the event: its ids queued (committed), then the hint handed to
    the fast path; returns the hint (None: the event goes the pipeline's way only)."""
    await rig.store.enqueue([QueueInput(event.entity, i, event.change_type)
                             for i in event.record_ids], rig.clock(), "cdc",
                            event.commit_timestamp_ms)
    hint = _fast(rig).hint(event, message)
    if hint is not None:
        _fast(rig).submit(hint)
    return hint


async def _synced(rig: SyncRig, n: int = 1) -> list[str]:
    """`n` opted-in Leads synced once (profile and confirmed identity in place)."""
    leads = rig.sf.select_ids("Lead", "IsDeleted = false AND Email != null AND "
                              "IsConverted = false AND HasOptedOutOfEmail = false", n)
    await rig.enqueue("Lead", leads)
    await rig.drain()
    return leads


async def _opt_out(rig: SyncRig, lead: str) -> OptOutHint | None:
    rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    hint = await _ingest(rig, *_last_event(rig))
    await _fast(rig).idle()
    return hint


async def test_an_opt_out_reaches_iterable_from_its_event_with_no_salesforce_read(
        sync_rig: SyncRig) -> None:
    lead = (await _synced(sync_rig))[0]
    email = _email(sync_rig, lead)
    queries, puts = _queries(sync_rig), _puts(sync_rig)
    assert await _opt_out(sync_rig, lead) is not None
    assert (_unsubscribed(sync_rig, email), _queries(sync_rig), _puts(sync_rig)) == (
        True, queries, puts + 1)
    stored = (await sync_rig.store.consent_states("Lead", [lead]))[lead]
    assert (stored.opted_out, stored.origin) == (True, "salesforce")
    # The queue row is still there: the pipeline syncs the record, and writes no consent again.
    assert (await sync_rig.store.queue_stats(sync_rig.clock())).depth == 1
    step = await sync_rig.drain()
    assert (step.synced + step.skipped, _queries(sync_rig) > queries, _puts(sync_rig)) == (
        1, True, puts + 1)


async def test_the_pipeline_first_then_the_fast_path_writes_once(sync_rig: SyncRig) -> None:
    lead = (await _synced(sync_rig))[0]
    puts = _puts(sync_rig)
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    event, message = _last_event(sync_rig)
    await sync_rig.store.enqueue([QueueInput("Lead", lead)], sync_rig.clock(), "cdc",
                                 event.commit_timestamp_ms)
    await sync_rig.drain()  # the pipeline reads and unsubscribes before the hint is handled
    assert _puts(sync_rig) == puts + 1
    hint = _fast(sync_rig).hint(event, message)
    assert hint is not None
    _fast(sync_rig).submit(hint)
    await _fast(sync_rig).idle()
    assert (_puts(sync_rig), _fast(sync_rig).stats.skipped) == (puts + 1, 1)


async def test_both_paths_under_way_at_once_write_once(sync_rig: SyncRig) -> None:
    leads = await _synced(sync_rig, 3)
    puts = _puts(sync_rig)
    sync_rig.sf.state.mass_update("Lead", leads, {"HasOptedOutOfEmail": True})
    event, message = _last_event(sync_rig)
    assert set(event.record_ids) == set(leads)  # one merged event, as a mass update sends
    # The fast path's call is slow: the flusher leases, reads and syncs the rows meanwhile.
    sync_rig.it.faults.slow_next("/api/subscriptions/*", times=1, delay_s=0.5)
    assert await _ingest(sync_rig, event, message) is not None
    await asyncio.sleep(0.1)
    step = await sync_rig.flusher.flush_once()
    await _fast(sync_rig).idle()
    assert (step.synced + step.skipped, _puts(sync_rig)) == (3, puts + 1)
    assert all(_unsubscribed(sync_rig, _email(sync_rig, i)) for i in leads)
    # And the other way round: the flusher reading (slowly) when the hint arrives.
    others = await _synced(sync_rig, 5)
    others = [i for i in others if i not in leads]
    sync_rig.sf.state.mass_update("Lead", others, {"HasOptedOutOfEmail": True})
    event, message = _last_event(sync_rig)
    await sync_rig.store.enqueue([QueueInput("Lead", i) for i in others], sync_rig.clock(),
                                 "cdc", event.commit_timestamp_ms)
    sync_rig.sf.faults.hang_next(QUERY_PATH, seconds=0.5)
    flush = asyncio.create_task(sync_rig.flusher.flush_once())
    while (await sync_rig.store.queue_stats(sync_rig.clock())).leased < len(others):
        await asyncio.sleep(0.01)
    hint = _fast(sync_rig).hint(event, message)
    assert hint is not None
    _fast(sync_rig).submit(hint)
    await flush
    await _fast(sync_rig).idle()
    assert _puts(sync_rig) == puts + 2
    assert all(_unsubscribed(sync_rig, _email(sync_rig, i)) for i in others)


async def test_what_the_event_alone_does_not_settle_goes_the_pipeline_way(
        sync_rig: SyncRig) -> None:
    lead, other = await _synced(sync_rig, 2)
    puts = _puts(sync_rig)
    # the opt-out comes with an email change: the identity names the old address
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True,
                                            "Email": "moved@example.com"})
    assert await _ingest(sync_rig, *_last_event(sync_rig)) is None
    # an opt-in (resubscribing is decided from a read)
    sync_rig.sf.state.update("Lead", other, {"HasOptedOutOfEmail": True})
    await sync_rig.drain()
    sync_rig.sf.state.update("Lead", other, {"HasOptedOutOfEmail": False})
    assert await _ingest(sync_rig, *_last_event(sync_rig)) is None
    # our own write's echo
    sync_rig.sf.state.update("Lead", other, {"HasOptedOutOfEmail": True},
                             origin="com/salesforce/api/rest/66.0;client=streamsync")
    assert await _ingest(sync_rig, *_last_event(sync_rig)) is None
    # a delete, a gap and an overflow carry no values
    for change in ("DELETE", "GAP_UPDATE", "GAP_OVERFLOW"):
        event, message = _last_event(sync_rig)
        header = {**message["data"]["payload"]["ChangeEventHeader"], "changeType": change}
        message["data"]["payload"] = {"ChangeEventHeader": header, "HasOptedOutOfEmail": True}
        assert _fast(sync_rig).hint(parse_event(message, ["Lead"]), message) is None
    await sync_rig.drain()
    assert _puts(sync_rig) == puts + 2  # the pipeline's: `lead` out, `other` out before
    assert _unsubscribed(sync_rig, "moved@example.com") is True


@pytest.mark.sync_config(**ONE_GROUP)
async def test_a_record_with_no_confirmed_identity_goes_the_pipeline_way(
        sync_rig: SyncRig) -> None:
    lead = sync_rig.sf.select_ids("Lead", "IsDeleted = false AND Email != null AND "
                                  "IsConverted = false AND HasOptedOutOfEmail = false", 1)[0]
    puts = _puts(sync_rig)
    assert await _opt_out(sync_rig, lead) is not None  # never synced: no identity yet
    assert (_puts(sync_rig), _fast(sync_rig).stats.skipped) == (puts, 1)
    await sync_rig.drain()
    assert (_puts(sync_rig), _unsubscribed(sync_rig, _email(sync_rig, lead))) == (puts + 1, True)


async def test_an_email_change_not_yet_synced_keeps_the_opt_out_off_the_old_address(
        sync_rig: SyncRig) -> None:
    lead = (await _synced(sync_rig))[0]
    old = _email(sync_rig, lead)
    puts = _puts(sync_rig)
    # The email change is half done: Iterable moved the profile (updateEmail), the update after
    # it failed, so the stored identity still names the old address and the row waits.
    sync_rig.sf.state.update("Lead", lead, {"Email": "moved@example.com"})
    await _ingest(sync_rig, *_last_event(sync_rig))
    sync_rig.it.faults.fail_next("/api/users/update", times=20, status=503)
    step = await sync_rig.flusher.flush_once()
    assert step.retried == 1 and _unsubscribed(sync_rig, old) is None
    assert (await sync_rig.store.identities("Lead", [lead]))[lead].iterable_email == old
    assert await _opt_out(sync_rig, lead) is not None
    # Unsubscribing the old address would have created a profile for it in an email project.
    assert (_puts(sync_rig), _unsubscribed(sync_rig, old), _fast(sync_rig).stats.skipped) == (
        puts, None, 1)
    sync_rig.it.faults.clear()
    await sync_rig.drain()
    assert (_puts(sync_rig), _unsubscribed(sync_rig, "moved@example.com")) == (puts + 1, True)
    assert _unsubscribed(sync_rig, old) is None


async def test_a_dead_letter_or_an_owed_reconciliation_keeps_records_off_the_fast_path(
        sync_rig: SyncRig) -> None:
    dead, owed = await _synced(sync_rig, 2)
    puts = _puts(sync_rig)
    await sync_rig.enqueue("Lead", [dead])
    [lease] = await sync_rig.store.lease("t", 10, 30.0, sync_rig.clock())
    await sync_rig.store.dead_letter_each([Failure(lease, "mapping_error", "x")],
                                          sync_rig.clock())
    assert await _opt_out(sync_rig, dead) is not None
    await sync_rig.store.set_reconcile_pending("Lead", 0, "gap_overflow", sync_rig.clock())
    assert await _opt_out(sync_rig, owed) is not None
    assert (_puts(sync_rig), _fast(sync_rig).stats.skipped) == (puts, 2)


async def test_the_fast_path_is_off_on_a_shared_store(sync_rig: SyncRig,
                                                      any_store: StoreAPI) -> None:
    # On PostgreSQL another worker's pipeline may sync the record meanwhile (docs/design.md §7).
    lead = (await _synced(sync_rig))[0]
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    fast = ConsentFastPath(sync_rig.pipeline.consent, RecordGate(), store=any_store)
    hint = fast.hint(*_last_event(sync_rig))
    assert (fast.enabled, hint is None) == (not any_store.shared, any_store.shared)


async def test_a_pipeline_call_waits_for_the_opt_outs_the_fast_path_has_in_hand(
        sync_rig: SyncRig) -> None:
    first, second = await _synced(sync_rig, 2)
    puts = _puts(sync_rig)
    sync_rig.it.faults.slow_next("/api/subscriptions/*", times=1, delay_s=0.5)
    sync_rig.sf.state.update("Lead", first, {"HasOptedOutOfEmail": True})
    assert await _ingest(sync_rig, *_last_event(sync_rig)) is not None  # its call is slow
    await asyncio.sleep(0.1)
    sync_rig.sf.state.update("Lead", second, {"HasOptedOutOfEmail": True})
    assert await _ingest(sync_rig, *_last_event(sync_rig)) is not None  # waits its turn
    # The flusher leases both rows and reads them meanwhile; its pipeline call waits for the
    # fast path rather than deciding them itself.
    step = await sync_rig.flusher.flush_once()
    await _fast(sync_rig).idle()
    assert (step.synced + step.skipped, _puts(sync_rig)) == (2, puts + 2)
    assert (_fast(sync_rig).stats.unsubscribed, _fast(sync_rig).stats.skipped) == (2, 0)


async def test_a_filter_a_reload_adds_keeps_its_object_off_the_fast_path(
        sync_rig: SyncRig) -> None:
    lead = (await _synced(sync_rig))[0]
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    event, message = _last_event(sync_rig)
    assert _fast(sync_rig).hint(event, message) is not None
    filtered = sync_rig.config.objects["Lead"].model_copy(update={"filter": "Rating = 'Hot'"})
    # what a reload does (runtime/reload.py): the pipeline gets the new config
    sync_rig.pipeline.config = sync_rig.config.model_copy(
        update={"objects": {**sync_rig.config.objects, "Lead": filtered}})
    assert _fast(sync_rig).hint(event, message) is None  # the filter decides what is synced


@pytest.mark.sync_config(objects={"Lead": {"delete_policy": "delete", "consent": {
    "unsubscribe_channel_ids": [MARKETING_EMAIL]}}, "Contact": {}})
async def test_a_delete_waits_for_the_opt_out_the_fast_path_is_sending(sync_rig: SyncRig) -> None:
    lead = (await _synced(sync_rig))[0]
    email = _email(sync_rig, lead)
    sync_rig.it.faults.slow_next("/api/subscriptions/*", times=1, delay_s=0.5)
    sync_rig.sf.state.update("Lead", lead, {"HasOptedOutOfEmail": True})
    assert await _ingest(sync_rig, *_last_event(sync_rig)) is not None  # its call is slow
    await asyncio.sleep(0.1)
    sync_rig.sf.state.delete("Lead", lead)
    await _ingest(sync_rig, *_last_event(sync_rig))
    await sync_rig.drain()  # the delete's pipeline call waits for the fast path's call
    await _fast(sync_rig).idle()
    assert (_fast(sync_rig).stats.unsubscribed, _fast(sync_rig).stats.failed) == (1, 0)
    assert _unsubscribed(sync_rig, email) is None  # then deleted
