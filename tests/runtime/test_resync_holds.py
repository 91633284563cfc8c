"""With several workers, the rows of an object another worker re-syncs are left to that worker
(runtime/resync_holds.py): a flusher whose worker does not lead the object's channel leases none
of them while the re-sync is owed, and leases them again once it is done. Real SQLite store,
both emulators over loopback HTTP."""

from __future__ import annotations

import pytest

from streamsync.runtime import resync_holds
from streamsync.runtime.flusher import Flusher
from tests.conftest import SyncRig

pytestmark = pytest.mark.salesforce(seed_accounts=2, seed_contacts=4, seed_leads=4)


class _Leads:
    worker_id = "worker-2"

    def __init__(self) -> None:
        self.led: list[str] = []

    def channels(self) -> list[str]:
        return list(self.led)


async def test_a_worker_leaves_the_rows_of_an_object_another_worker_resyncs(
        sync_rig: SyncRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resync_holds, "VIEW_S", 0.0)  # every lease looks at the store afresh
    rig, leads = sync_rig, _Leads()
    flusher = Flusher(config=rig.config, store=rig.store, salesforce=rig.clients.salesforce,
                      pipeline=rig.pipeline, metrics=rig.metrics, owner=leads.worker_id,
                      clock=rig.clock, leads=leads)
    await rig.enqueue("Lead", rig.sf.select_ids("Lead", "IsConverted = false", limit=2))
    await rig.enqueue("Contact", rig.sf.select_ids("Contact", limit=2))
    await rig.store.start_resync("Lead", "fingerprint", {}, [], rig.clock())

    assert "Lead" not in await flusher.leasable()
    assert (await flusher.flush_once()).leased == 2  # the Contacts
    assert await rig.store.queue_depth_by_object() == {"Lead": 2}
    assert (await flusher.flush_once()).idle

    leads.led = [rig.config.channel("Lead")]  # this worker leads Lead's channel: the re-sync's
    assert (await flusher.flush_once()).leased == 2
    assert await rig.store.queue_depth_by_object() == {}

    leads.led = []
    await rig.enqueue("Lead", rig.sf.select_ids("Lead", "IsConverted = false", limit=1))
    assert (await flusher.flush_once()).idle
    await rig.store.set_applied_mapping("Lead", "fingerprint", {}, rig.clock())  # re-sync done
    assert "Lead" in await flusher.leasable()
    assert (await flusher.flush_once()).leased == 1


async def test_one_worker_leases_every_object_while_it_resyncs(sync_rig: SyncRig) -> None:
    """Without `leads` (one worker, SQLite) the re-sync and the flusher share one process and
    its record gate: nothing is held back."""
    rig = sync_rig
    await rig.store.start_resync("Lead", "fingerprint", {}, [], rig.clock())
    assert await rig.flusher.leasable() == rig.flusher.objects
