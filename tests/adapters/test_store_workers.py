"""Worker registry and channel leadership leases: the fencing is enforced by the store itself,
seen through two handles of one store (two processes' view), on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from streamsync.adapters.store import ChannelAnchor, QueueInput, StoreAPI, WorkerInfo
from streamsync.errors import LeadershipLost
from tests.store_backends import StoreSpace

T0 = 1_700_000_000.0
CH = "/data/LeadChangeEvent"
TTL = 15.0


@pytest.fixture
async def stores(store_space: StoreSpace) -> AsyncIterator[tuple[StoreAPI, StoreAPI]]:
    a = await store_space.open()
    b = await store_space.open()
    yield a, b
    await a.close()
    await b.close()


def lead(n: int) -> QueueInput:
    return QueueInput("Lead", f"00Q{n:015d}")


async def test_one_holder_at_a_time_and_the_token_grows_on_each_change_of_holder(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, b = stores
    first = await a.acquire_channel(CH, "wa", TTL, T0)
    assert first is not None and first.token == 1 and first.took_over_from is None
    assert await b.acquire_channel(CH, "wb", TTL, T0 + 1) is None  # held by wa
    assert await a.renew_channel(CH, "wa", 1, TTL, T0 + 10) == T0 + 10 + TTL
    assert await b.acquire_channel(CH, "wb", TTL, T0 + 20) is None  # renewed: still held
    taken = await b.acquire_channel(CH, "wb", TTL, T0 + 10 + TTL + 0.1)  # wa's lease ran out
    assert taken is not None and taken.token == 2 and taken.took_over_from == "wa"
    assert await a.renew_channel(CH, "wa", 1, TTL, T0 + 30) is None  # deposed
    assert await b.release_channel(CH, "wb", 2, T0 + 31)
    again = await a.acquire_channel(CH, "wa", TTL, T0 + 31)  # released: free at once
    assert again is not None and again.token == 3 and again.took_over_from is None
    [row] = await a.channel_leases()
    assert (row.holder, row.token, row.failovers) == ("wa", 3, 1)


async def test_a_deposed_leaders_event_write_is_refused_by_the_store_and_commits_nothing(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, b = stores
    grant_a = await a.acquire_channel(CH, "wa", TTL, T0)
    assert grant_a is not None
    await a.fenced_record_event(CH, grant_a.token, 10, [lead(1)], 1000, T0 + 1)
    grant_b = await b.acquire_channel(CH, "wb", TTL, T0 + TTL + 1)
    assert grant_b is not None and grant_b.token == grant_a.token + 1

    with pytest.raises(LeadershipLost) as caught:
        await a.fenced_record_event(CH, grant_a.token, 11, [lead(2)], 2000, T0 + TTL + 2)
    assert caught.value.channel == CH and caught.value.current == grant_b.token
    with pytest.raises(LeadershipLost):
        await a.fenced_set_replay(CH, grant_a.token, None, T0 + TTL + 2)
    with pytest.raises(LeadershipLost):
        await a.fenced_set_channel_anchor(CH, grant_a.token, ChannelAnchor("unanchored", 5),
                                          T0 + TTL + 2)

    state = await b.get_replay(CH)
    assert state is not None and state.replay_id == 10  # the stale write moved nothing
    assert (await b.queue_stats(T0 + 40)).depth == 1  # lead(2) was not enqueued
    assert await b.channel_anchor(CH) is None
    await b.fenced_record_event(CH, grant_b.token, 11, [lead(2)], 2000, T0 + TTL + 3)
    state = await a.get_replay(CH)
    assert state is not None and state.replay_id == 11


async def test_an_expired_lease_nobody_took_still_fences_by_token(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, _ = stores
    grant = await a.acquire_channel(CH, "wa", TTL, T0)
    assert grant is not None
    # Past its expiry but not taken over: no other worker subscribes, the write is safe.
    await a.fenced_record_event(CH, grant.token, 7, [], None, T0 + TTL + 5)
    assert await a.renew_channel(CH, "wa", grant.token, TTL, T0 + TTL + 6) is not None
    with pytest.raises(LeadershipLost):
        await a.fenced_record_event(CH, grant.token + 1, 8, [], None, T0 + TTL + 7)
    with pytest.raises(LeadershipLost):  # a channel nobody ever led
        await a.fenced_record_event("/data/ContactChangeEvent", 1, 1, [], None, T0)


async def test_take_over_is_for_the_single_owner_and_still_moves_the_token(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, b = stores
    old = await a.acquire_channel(CH, "crashed", TTL, T0)
    assert old is not None
    assert await b.acquire_channel(CH, "restarted", TTL, T0 + 1) is None
    new = await b.acquire_channel(CH, "restarted", TTL, T0 + 1, take_over=True)
    assert new is not None and new.token == old.token + 1 and new.took_over_from == "crashed"
    with pytest.raises(LeadershipLost):
        await a.fenced_record_event(CH, old.token, 3, [], None, T0 + 2)


async def test_registry_heartbeats_staleness_and_clean_stop_releases_leases(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, b = stores
    await a.register_worker(WorkerInfo("wa", "host-a", 101, T0, T0))
    await b.register_worker(WorkerInfo("wb", "host-b", 202, T0, T0))
    assert await a.acquire_channel(CH, "wa", TTL, T0) is not None
    assert await a.heartbeat("wa", T0 + 5)
    workers = {w.worker_id: w for w in await b.workers()}
    assert workers["wa"].heartbeat_at == T0 + 5 and workers["wb"].pid == 202
    assert workers["wb"].is_stale(T0 + 30, stale_after_s=20.0)
    assert not workers["wa"].is_stale(T0 + 20, stale_after_s=20.0)

    await a.worker_stopped("wa", T0 + 6)
    assert not await a.heartbeat("wa", T0 + 7)  # stopped: must register again
    [row] = await b.channel_leases()
    assert row.holder is None and row.held_by(T0 + 6) is None
    grant = await b.acquire_channel(CH, "wb", TTL, T0 + 6)
    assert grant is not None and grant.took_over_from is None
    stopped = {w.worker_id: w for w in await b.workers()}["wa"]
    assert stopped.stopped_at == T0 + 6 and stopped.is_stale(T0 + 6, stale_after_s=20.0)
    # A stopped worker's row is forgotten after a while; a live lease holder's never.
    assert await b.forget_workers(T0 + 100) == 1
    assert [w.worker_id for w in await b.workers()] == ["wb"]


async def test_queue_leases_of_a_worker_gone_silent_are_reclaimed_and_a_live_ones_kept(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, b = stores
    await a.register_worker(WorkerInfo("dead", "h", 1, T0, T0))
    await a.register_worker(WorkerInfo("live", "h", 2, T0, T0))
    await a.enqueue([lead(1), lead(2)], T0, "cdc")
    [dead_lease] = await a.lease("dead", 1, 600.0, T0)
    [live_lease] = await b.lease("live", 1, 600.0, T0)
    assert await b.heartbeat("live", T0 + 20)
    assert await b.reclaim_leases_of_gone_workers(T0 + 20, stale_after_s=15.0) == 1
    again = await b.lease("other", 10, 600.0, T0 + 20)
    assert [x.record_id for x in again] == [dead_lease.record_id]  # due at once
    assert again[0].attempts == dead_lease.attempts + 1  # an expired lease is an attempt
    assert live_lease.record_id not in {x.record_id for x in again}
