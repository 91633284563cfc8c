"""Joint backfills in the store, on both backends, through two handles (two processes' view):
windows leased exclusively, an expired lease taken over and the old holder fenced off, one
closer, and every participant's counts kept for the run's summary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from streamsync.adapters.store import BackfillWindow, Participant, StoreAPI
from streamsync.errors import WindowTaken
from tests.store_backends import StoreSpace

T0 = 1_700_000_000.0
WINDOWS = [BackfillWindow("Lead", f"2024-0{i}-01T00:00:00Z", f"2024-0{i + 1}-01T00:00:00Z")
           for i in range(1, 4)]
OPTIONS = {"scope": {"objects": ["Lead"], "since": None}}
A = Participant("pa", 101, "host-a")
B = Participant("pb", 202, "host-b")


@pytest.fixture
async def stores(store_space: StoreSpace) -> AsyncIterator[tuple[StoreAPI, StoreAPI]]:
    a = await store_space.open()
    b = await store_space.open()
    yield a, b
    await a.close()
    await b.close()


async def _run(a: StoreAPI, b: StoreAPI) -> str:
    run, created = await a.start_or_find_run("bf-1", WINDOWS, OPTIONS, T0, objects=["Lead"])
    assert created
    again, created = await b.start_or_find_run("bf-2", WINDOWS, OPTIONS, T0 + 1,
                                               objects=["Lead"])
    assert not created and again.run_id == run.run_id  # the same scope in progress: joined
    await a.join_run(run.run_id, A)
    await b.join_run(run.run_id, B)
    return run.run_id


async def test_windows_are_leased_to_one_participant_at_a_time(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, b = stores
    run_id = await _run(a, b)
    claims = await asyncio.gather(a.claim_window(run_id, "pa", 30.0),
                                  b.claim_window(run_id, "pb", 30.0))
    got = [c.checkpoint.window for c in claims if c.checkpoint is not None]
    assert len(got) == 2 and got[0] != got[1]
    third = await a.claim_window(run_id, "pa", 30.0)
    assert third.checkpoint is not None and third.checkpoint.window not in got
    none = await b.claim_window(run_id, "pb", 30.0)
    assert none.checkpoint is None and none.unfinished == 3  # all leased, none done
    mine = {c.checkpoint.window for c in (*claims, third) if c.checkpoint is not None
            and c is not claims[1]}
    for window in mine:
        await a.save_leased_checkpoint(run_id, window, "pa", "00Q000000000001AAA", 10, 30.0,
                                       {"records_read": 10}, done=True)
    with pytest.raises(WindowTaken):  # b's window is b's
        assert claims[1].checkpoint is not None
        await a.save_leased_checkpoint(run_id, claims[1].checkpoint.window, "pa", None, 1,
                                       30.0)
    assert (await a.claim_window(run_id, "pa", 30.0)).unfinished == 1
    assert await b.renew_leases(run_id, "pb", 30.0, {"records_read": 5}) == 1


async def test_an_expired_lease_is_taken_over_and_its_old_holder_fenced_off(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, b = stores
    run_id = await _run(a, b)
    first = await a.claim_window(run_id, "pa", 0.3)
    assert first.checkpoint is not None and not first.taken_over
    window = first.checkpoint.window
    await a.save_leased_checkpoint(run_id, window, "pa", "00Q000000000005AAA", 5, 0.3)
    for _ in range(2):  # b takes the other windows
        assert (await b.claim_window(run_id, "pb", 30.0)).checkpoint is not None
    assert (await b.claim_window(run_id, "pb", 30.0)).checkpoint is None  # a's still holds
    await asyncio.sleep(0.5)  # a stops renewing: its lease expires
    taken = await b.claim_window(run_id, "pb", 30.0)
    assert taken.checkpoint is not None and taken.taken_over
    assert taken.checkpoint.window == window
    assert taken.checkpoint.last_id == "00Q000000000005AAA"  # continues from a's checkpoint
    assert taken.checkpoint.records_done == 5
    with pytest.raises(WindowTaken):
        await a.save_leased_checkpoint(run_id, window, "pa", "00Q000000000009AAA", 9, 0.3)
    assert await a.renew_leases(run_id, "pa", 30.0) == 0
    await b.save_leased_checkpoint(run_id, window, "pb", "00Q000000000009AAA", 9, 30.0)


async def test_a_participant_that_leaves_frees_its_windows_at_once(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, b = stores
    run_id = await _run(a, b)
    held = [await a.claim_window(run_id, "pa", 600.0) for _ in range(3)]
    assert all(c.checkpoint is not None for c in held)
    assert (await b.claim_window(run_id, "pb", 600.0)).checkpoint is None
    await a.release_participant(run_id, "pa", {"records_read": 7})
    taken = await b.claim_window(run_id, "pb", 600.0)
    assert taken.checkpoint is not None and not taken.taken_over  # left, not taken from it
    states = {s.participant.participant_id: s for s in await b.run_participants(run_id)}
    assert states["pa"].left and not states["pb"].left
    assert states["pa"].totals == {"records_read": 7}
    assert states["pa"].participant == A and states["pb"].heartbeat_age_s < 60


async def test_one_participant_closes_the_run_and_every_count_is_kept(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, b = stores
    run_id = await _run(a, b)
    assert await a.claim_run_close(run_id, "pa", 30.0)
    assert not await b.claim_run_close(run_id, "pb", 30.0)
    assert await a.claim_run_close(run_id, "pa", 30.0)  # its own lease: renewed
    await b.release_participant(run_id, "pb", {"records_read": 3, "records_written": 2})
    await a.finish_run_as(run_id, "pa", {"records_read": 4, "catchup_queued": 1}, T0 + 9)
    run = await b.get_run(run_id)
    assert run is not None and run.finished
    assert not await b.claim_run_close(run_id, "pb", 30.0)
    totals = {s.participant.participant_id: dict(s.totals)
              for s in await b.run_participants(run_id)}
    assert totals == {"pa": {"records_read": 4, "catchup_queued": 1},
                      "pb": {"records_read": 3, "records_written": 2}}
    # the scope's run finished: the next backfill of it starts a new run
    _new, created = await b.start_or_find_run("bf-3", WINDOWS, OPTIONS, T0 + 10)
    assert created


async def test_an_expired_closing_lease_passes_to_another_participant(
        stores: tuple[StoreAPI, StoreAPI]) -> None:
    a, b = stores
    run_id = await _run(a, b)
    assert await a.claim_run_close(run_id, "pa", 0.2)
    assert not await b.claim_run_close(run_id, "pb", 0.2)
    await asyncio.sleep(0.4)
    assert await b.claim_run_close(run_id, "pb", 30.0)
