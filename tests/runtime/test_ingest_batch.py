"""Group commit of the ingest (runtime/ingest_batch.py): the messages one CometD connect
delivered are stored in one transaction per run of a channel's messages, with the last replay
id; the flusher hears of them only after the commit. Over real HTTP against the Salesforce
emulator, with a real SQLite store."""

from __future__ import annotations

from typing import Any

from streamsync.adapters.store import QueueInput, Store
from streamsync.runtime.ingest_batch import EventBatch
from streamsync.runtime.wakeup import QueueSignal
from tests.runtime.test_ingest import LEAD, Rig, queued, rig, sub, subscribe

__all__ = ["rig"]  # the fixture, used by name


class CountingStore(Store):
    """The real store, counting its record_event transactions."""

    calls: int = 0

    async def record_event(self, *args: Any, **kwargs: Any) -> None:
        type(self).calls += 1
        await super().record_event(*args, **kwargs)


async def test_a_connect_batch_is_stored_in_one_transaction_with_the_last_replay_id(
        rig: Rig) -> None:
    store = rig.store
    ingest = rig.ingest()
    await subscribe(ingest)
    leads = [rig.lead(f"Bulk{i}") for i in range(40)]  # one CREATE event each
    messages: list[Any] = []
    while len(messages) < len(leads):
        messages.extend(await sub(ingest).poll_once())
    counting = CountingStore(store._require(), store.path)
    ingest._store = counting
    CountingStore.calls = 0
    await ingest.handle_messages(messages)
    assert CountingStore.calls == 1
    replay = await store.get_replay(LEAD)
    assert replay is not None and replay.replay_id == messages[-1]["data"]["event"]["replayId"]
    assert set(await queued(store)) == set(leads)
    assert ingest.stats.events == len(leads) and ingest.stats.ids_queued == len(leads)


async def test_runs_of_channels_keep_their_order_and_wake_the_flusher_after_commit(
        store: Store) -> None:
    signal = QueueSignal()
    batch = EventBatch(store, None, signal)
    woken: list[int] = []
    before = signal.generation
    await batch.add("/a", 1, [QueueInput("Lead", "00Q000000000001AAA")], 5_000, 1.0)
    await batch.add("/a", 2, [QueueInput("Lead", "00Q000000000002AAA")], 4_000, 1.0)
    assert signal.generation == before and await store.get_replay("/a") is None
    await batch.add("/b", 7, [QueueInput("Contact", "003000000000001AAA")], 6_000, 1.0)
    # The run of /a was written when /b began; /b waits for the commit.
    a = await store.get_replay("/a")
    assert a is not None and (a.replay_id, a.last_commit_ts_ms) == (2, 4_000)
    assert await store.get_replay("/b") is None
    batch.after(lambda: woken.append(signal.generation))
    await batch.commit(2.0)
    b = await store.get_replay("/b")
    assert b is not None and b.replay_id == 7
    assert woken and woken[0] > before
    # ... and before the commit's own wake-up: the consent fast path's first reads go ahead of
    # the flusher's leases (runtime/consent_fast.py)
    assert woken[0] < signal.generation
    assert (await store.queue_stats(3.0)).depth == 3
