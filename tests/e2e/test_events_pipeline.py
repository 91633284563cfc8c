"""The event worker's pipeline (docs/events.md §4): the next lease is read while one is settled,
without breaking each record's commit order, and one slow trackBulk call holds up only its
own batch. The worker runs on a real SQLite store against both emulators over loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamsync.adapters.store import StoreAPI
from streamsync.adapters.store.events import PendingEvent
from streamsync.core.event_rules import event_id
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.errors import TransientError
from streamsync.models import EventCandidate
from streamsync.runtime.event_worker import EventWorker
from tests.conftest import build_config, production_components
from tests.e2e.harness import backfill, wait_for

pytestmark = [
    pytest.mark.salesforce(long_poll_s=1.0, seed_accounts=2, seed_contacts=2, seed_leads=12),
    pytest.mark.timeout(60),
]

CHANNEL = "/data/LeadChangeEvent"
RULE = {"name": "lead-title", "object": "Lead", "trigger": "update",
        "changed_fields": ["Title"], "event_name": "leadTitleChanged",
        "mapping": {"Title": "dataFields.title"}}


@dataclass
class Rig:
    sf: SalesforceEmulator
    it: IterableEmulator
    store: StoreAPI
    worker: EventWorker
    leads: list[str]
    commits: int = 0

    async def change(self, lead: str, tx: str) -> str:
        """Store a Title change of `lead` in transaction `tx` as ingest does; its event id."""
        return (await self.changes([lead], tx))[0]

    async def changes(self, leads: list[str], tx: str) -> list[str]:
        """Store one transaction's Title changes of `leads` as ingest does; their event ids."""
        self.commits += 1
        ids = [event_id("lead-title", lead, tx) for lead in leads]
        await self.store.record_event(CHANNEL, self.commits, [], 1_000 + self.commits,
                                      time.time(), [EventCandidate(
                                          eid, "lead-title", "Lead", lead, "UPDATE",
                                          1_000 + self.commits, True, {}, False)
                                          for eid, lead in zip(ids, leads, strict=True)])
        self.worker.signal.notify()
        return ids

    def tracked(self) -> set[str]:
        """Ids of the events Iterable stored."""
        return set(self.it.messaging_for(self.it.state.project()).events.by_id)


async def _rig(sf: SalesforceEmulator, it: IterableEmulator, tmp_path: Path,
               delivery: dict[str, int]) -> AsyncIterator[Rig]:
    config = build_config(sf, it, tmp_path, events=[RULE], event_delivery=delivery)
    await backfill(config, ("Lead",))  # trackBulk creates no users
    async with production_components(config) as parts:
        worker = EventWorker(config=parts.config, rules=parts.rules, store=parts.store,
                             salesforce=parts.salesforce, iterable=parts.iterable)
        leads = sf.select_ids("Lead", "Email != null AND IsConverted = false", 6)
        assert len(leads) == 6
        yield Rig(sf, it, parts.store, worker, leads)


def delivery_rig(name: str, **delivery: int) -> Any:
    """A fixture `name`: a Rig whose [event_delivery] is `delivery`."""
    @pytest.fixture(name=name)
    async def fixture(sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator,
                      tmp_path: Path) -> AsyncIterator[Rig]:
        async for rig in _rig(sf_emulator, iterable_emulator, tmp_path, delivery):
            yield rig

    return fixture


ahead_rig = delivery_rig("ahead_rig", batch_ids=2, decide_ahead=1)
slow_rig = delivery_rig("slow_rig", batch_max_events=2, max_in_flight=2)


async def test_the_next_lease_is_read_ahead_and_a_records_later_change_still_waits(
        ahead_rig: Rig) -> None:
    rig = ahead_rig
    a, b, c, d, e, _ = rig.leads
    first = [await rig.change(a, "tx-1"), await rig.change(b, "tx-1")]
    a_again = await rig.change(a, "tx-2")  # must wait for a's first change
    later = [await rig.change(c, "tx-2"), await rig.change(d, "tx-2"),
             await rig.change(e, "tx-2")]
    assert await rig.worker.decide_once() == 2
    assert rig.worker.stats.decided == 2 and rig.worker.stats.fired == 2
    # The next lease was taken and is being read already: of the next two rows, a's later
    # change was left out (a's first was undecided then), so it holds c alone, and the rest
    # is free now, a's later change first.
    probe = await rig.store.lease_events("new", 10, 60, time.time())
    assert [p.candidate.event_id for p in probe] == [a_again, *later[1:]]
    await rig.store.release_events(probe[0].token, time.time())
    assert await rig.worker.decide_once() == 1  # c
    assert await rig.worker.decide_once() == 2  # a's later change, d
    assert await rig.worker.decide_once() == 1  # e
    assert await rig.worker.decide_once() == 0
    assert rig.worker.stats.fired == 6
    await rig.worker.drain()
    assert rig.tracked() >= {*first, a_again, *later}


async def test_a_slow_track_bulk_call_holds_up_only_its_own_batch(slow_rig: Rig) -> None:
    rig = slow_rig
    rig.it.faults.slow_next("/api/events/trackBulk", delay_s=20.0)
    stop = asyncio.Event()
    running = asyncio.create_task(rig.worker.run(stop))
    try:
        slow = await rig.changes(rig.leads[:2], "tx-1")  # one batch

        async def first_call_slowed() -> bool:
            return bool(rig.it.faults.triggered)

        await wait_for(first_call_slowed, 10.0, "the first trackBulk call")
        quick = await rig.changes(rig.leads[2:4], "tx-2")

        async def quick_ones_tracked() -> bool:
            counts = await rig.store.event_counts()
            return set(quick) <= rig.tracked() and counts.get("sent") == 2

        await wait_for(quick_ones_tracked, 10.0, "the batch after the slow one")
        assert not set(slow) & rig.tracked()  # still in the slow call
    finally:
        stop.set()
        running.cancel()  # the slow call would hold the stop up for its whole delay
        await asyncio.gather(running, return_exceptions=True)


one_slot_rig = delivery_rig("one_slot_rig", batch_max_events=2, max_in_flight=1)


async def test_ready_rows_waiting_for_a_send_slot_do_not_wake_the_decide_loop(
        one_slot_rig: Rig) -> None:
    """With no new candidate, the decide loop waits for one: ready rows that the send loops
    cannot take yet are due, and the loop that woke for them leased nothing, over and over
    (651 empty leases in one 20,000-event burst of scripts/bench_events.py)."""
    rig = one_slot_rig
    rig.it.faults.slow_next("/api/events/trackBulk", delay_s=20.0)
    leases: list[str] = []
    lease_events = rig.store.lease_events

    async def counted(state: str, *args: float) -> list[PendingEvent]:
        leases.append(state)
        return await lease_events(state, *args)  # type: ignore[arg-type]

    rig.store.lease_events = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(rig.worker.run(stop))
    try:
        await rig.changes(rig.leads, "tx-1")  # three batches: two leased, one ready and due

        async def one_batch_left_ready() -> bool:
            counts = await rig.store.event_counts()
            return bool(rig.it.faults.triggered) and counts == {"ready": 6}

        await wait_for(one_batch_left_ready, 10.0, "the slow call and a batch left ready")
        await asyncio.sleep(0.2)  # the second send loop has leased its batch
        before = leases.count("new")
        await asyncio.sleep(1.0)
        assert leases.count("new") - before <= 2  # the idle recheck, not a spin
    finally:
        stop.set()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_decided_batches_go_straight_to_the_send_loops_and_come_back_on_release(
        one_slot_rig: Rig) -> None:
    """A decide step hands its first batches (one per send loop: two here) to the send loops,
    leased to them in its settling transaction, so no lease of ready rows reads them back; the
    rest waits in the store, due; a batch not taken yet is given back at shutdown."""
    rig = one_slot_rig
    worker = rig.worker
    assert await worker.send_once() == 0  # no ready row waits in the store
    ids = await rig.changes(rig.leads, "tx-1")  # six events: three batches of two
    assert await worker.decide_once() == 6
    counts = await rig.store.event_counts()
    assert counts == {"ready": 6}
    due = await rig.store.lease_events("ready", 10, 60, time.time())
    assert [p.candidate.event_id for p in due] == ids[4:]  # the batches handed stay leased
    await rig.store.release_events(due[0].token, time.time())
    assert await worker.send_once() == 2  # a handed batch, no lease
    assert rig.tracked() == set(ids[:2])
    await worker.release_prepared()  # shutdown: the other handed batch is due again
    due = await rig.store.lease_events("ready", 10, 60, time.time())
    assert sorted(p.candidate.event_id for p in due) == sorted(ids[2:])


async def test_a_burst_is_sent_with_no_ready_lease_while_the_send_loops_keep_up(
        ahead_rig: Rig) -> None:
    rig = ahead_rig
    leases: list[tuple[str, int]] = []
    lease_events = rig.store.lease_events

    async def counted(state: str, *args: float) -> list[PendingEvent]:
        rows = await lease_events(state, *args)  # type: ignore[arg-type]
        leases.append((state, len(rows)))
        return rows

    rig.store.lease_events = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(rig.worker.run(stop))
    try:
        async def looked_in_the_store() -> bool:
            return ("ready", 0) in leases  # no ready row waits there

        await wait_for(looked_in_the_store, 10.0, "the first send step")
        ids = await rig.changes(rig.leads, "tx-1")

        async def all_sent() -> bool:
            return set(ids) <= rig.tracked() and (await rig.store.event_counts()) == {
                "sent": len(ids)}

        await wait_for(all_sent, 20.0, "every event sent")
    finally:
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
    assert [n for state, n in leases if state == "ready" and n] == []


topping_rig = delivery_rig("topping_rig", batch_ids=2, batch_max_events=3, max_in_flight=1)


async def test_a_batch_no_send_loop_took_yet_is_topped_up_by_the_next_decisions(
        topping_rig: Rig) -> None:
    """Leases of two candidates, batches of three: cut per lease, six events would take three
    trackBulk calls; the untaken last batch is filled first, so they take two
    (runtime/event_handoff.py)."""
    rig, worker = topping_rig, topping_rig.worker
    assert await worker.send_once() == 0  # no ready row waits in the store
    ids = await rig.changes(rig.leads, "tx-1")
    for _ in range(3):
        assert await worker.decide_once() == 2
    assert await rig.store.lease_events("ready", 10, 60, time.time()) == []  # all handed
    assert await worker.send_once() == 3
    assert await worker.send_once() == 3
    assert worker.stats.calls == 2 and rig.tracked() == set(ids)


async def test_a_reopened_batch_goes_back_whole_when_its_top_up_is_not_stored(
        topping_rig: Rig) -> None:
    rig, worker = topping_rig, topping_rig.worker
    assert await worker.send_once() == 0  # no ready row waits in the store
    ids = await rig.changes(rig.leads, "tx-1")
    assert await worker.decide_once() == 2
    settle = rig.store.settle_decisions

    async def refused(*args: object, **kwargs: object) -> None:
        raise TransientError("the store is busy")

    rig.store.settle_decisions = refused  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        await worker.decide_once()
    rig.store.settle_decisions = settle  # type: ignore[method-assign]
    assert await worker.send_once() == 2  # the first batch, as it was
    assert rig.tracked() == set(ids[:2])


burst_rig = delivery_rig("burst_rig", batch_ids=2, batch_max_events=2, decide_ahead=1)


async def _all_new_leased(store: StoreAPI) -> bool:
    due = await store.next_event_due("new")
    return due is not None and due > time.time() + 10  # held to their lease: none is free


async def test_candidates_stored_while_a_full_lease_is_read_are_leased_and_read_meanwhile(
        burst_rig: Rig) -> None:
    """A lease of a batch's worth or more (a burst): what ingest stores while its Salesforce
    read is in flight is leased and read at once, not after the read."""
    rig = burst_rig
    a, b, c, d, *_ = rig.leads
    first = await rig.changes([a, b], "tx-1")
    rig.sf.faults.set_latency(600)
    deciding = asyncio.create_task(rig.worker.decide_once())
    try:
        await wait_for(lambda: _all_new_leased(rig.store), 5.0, "the first lease")
        later = await rig.changes([c, d], "tx-2")  # notifies the worker, as ingest does
        await wait_for(lambda: _all_new_leased(rig.store), 0.4, "the second lease, read ahead")
        assert not deciding.done()  # the first read is still in flight
    finally:
        assert await deciding == 2
        rig.sf.faults.set_latency(0)
    assert await rig.worker.decide_once() == 2  # read already
    await rig.worker.drain()
    assert rig.tracked() >= {*first, *later}


async def test_a_trickles_small_lease_does_not_lease_ahead_while_it_is_read(
        topping_rig: Rig) -> None:
    """Below a batch's worth (batches of three here), a change stored during the read waits
    for the next step, so one candidate does not take a lease of its own."""
    rig = topping_rig
    a, b, c, *_ = rig.leads
    await rig.changes([a, b], "tx-1")
    rig.sf.faults.set_latency(400)
    deciding = asyncio.create_task(rig.worker.decide_once())
    try:
        await wait_for(lambda: _all_new_leased(rig.store), 5.0, "the first lease")
        await rig.changes([c], "tx-2")
        await asyncio.sleep(0.2)
        assert not await _all_new_leased(rig.store)
    finally:
        assert await deciding == 2
        rig.sf.faults.set_latency(0)
