"""A re-sync page is read some time before it is written; what real time writes meanwhile is
newer and must stay (runtime/pipeline.py). Real SQLite store, both emulators over loopback HTTP.

- A delete holds its record in the pipeline's gate like any call, so it never runs between a
  page's look at the record's identity and the page's write.
- A record deleted (policy `delete`: its user deleted, its identity forgotten) after its page
  was read is not written again.
- A Lead converted after its page was read: the Contact it became took the profile over (its
  identity, saved since, holds the email); the page's Lead is not written but queued, so real
  time reads it afresh.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streamsync.adapters.store import IdentityUpdate
from tests.conftest import SyncRig

pytestmark = pytest.mark.salesforce(seed_accounts=2, seed_contacts=4, seed_leads=4)


async def _page_record(rig: SyncRig, lead: str) -> dict[str, Any]:
    """The Lead as a re-sync page reads it (the mapping's fields)."""
    fields = rig.pipeline.mappings["Lead"].soql_fields()
    [record] = [r async for r in rig.clients.salesforce.records(
        f"SELECT {', '.join(fields)} FROM Lead WHERE Id = '{lead}'")]
    return record


async def test_a_delete_waits_for_a_call_that_holds_its_record(sync_rig: SyncRig) -> None:
    rig = sync_rig
    [contact] = rig.sf.select_ids("Contact", "Email != null", limit=1)
    await rig.enqueue("Contact", [contact])
    assert (await rig.drain()).synced == 1
    rig.sf.state.delete("Contact", contact)
    async with rig.pipeline.gate.hold("Contact", [contact]):  # a re-sync page holds it
        delete = asyncio.create_task(rig.pipeline.sync_deleted("Contact", [contact],
                                                               source="cdc"))
        await asyncio.sleep(0.3)
        assert not delete.done()
    outcome = await asyncio.wait_for(delete, 10.0)
    assert outcome.synced == [contact]


async def test_a_lead_whose_profile_another_record_took_since_the_read_is_queued_not_written(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    [lead] = rig.sf.select_ids("Lead", "IsConverted = false AND Email != null", limit=1)
    [contact] = rig.sf.select_ids("Contact", "Email != null", limit=1)
    record = await _page_record(rig, lead)
    email = str(record["Email"]).lower()
    page_read_at = rig.clock()
    rig.clock.advance(1.0)
    # Converted meanwhile: its Contact holds the Lead's email now (the hand-over, then its sync).
    await rig.store.save_identities(
        [IdentityUpdate("Contact", contact, email, None, "contact-payload")], rig.clock())
    writes_before = rig.it.state.count("POST /api/users/bulkUpdate")

    outcome = await rig.pipeline.sync_records("Lead", [record], source="resync",
                                              read_at=page_read_at)

    assert outcome.skipped == [lead] and not outcome.synced
    rig.it.flush()
    assert rig.it.state.count("POST /api/users/bulkUpdate") == writes_before
    assert await rig.store.queue_depth_by_object() == {"Lead": 1}
    [queued] = await rig.store.lease("test", 10, 30.0, rig.clock())
    assert (queued.record_id, queued.source) == (lead, "retry")


async def test_a_never_synced_record_of_a_page_is_written(sync_rig: SyncRig) -> None:
    """The same page with no other record holding the email: written as ever."""
    rig = sync_rig
    [lead] = rig.sf.select_ids("Lead", "IsConverted = false AND Email != null", limit=1)
    record = await _page_record(rig, lead)
    page_read_at = rig.clock()
    rig.clock.advance(1.0)
    outcome = await rig.pipeline.sync_records("Lead", [record], source="resync",
                                              read_at=page_read_at)
    assert outcome.synced == [lead]
    assert await rig.store.queue_depth_by_object() == {}


@pytest.mark.sync_config(objects={"Lead": {"delete_policy": "delete"}})
async def test_a_record_deleted_after_its_page_was_read_is_not_written_again(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    [lead] = rig.sf.select_ids("Lead", "IsConverted = false AND Email != null", limit=1)
    await rig.enqueue("Lead", [lead])
    assert (await rig.drain()).synced == 1
    record = await _page_record(rig, lead)
    email = str(record["Email"]).lower()
    page_read_at = rig.clock()
    rig.clock.advance(1.0)
    rig.sf.state.delete("Lead", lead)
    assert (await rig.pipeline.sync_deleted("Lead", [lead], source="cdc")).synced == [lead]
    assert email not in rig.profiles()

    outcome = await rig.pipeline.sync_records("Lead", [record], source="resync",
                                              read_at=page_read_at)

    assert outcome.skipped == [lead] and not outcome.synced
    assert email not in rig.profiles()
