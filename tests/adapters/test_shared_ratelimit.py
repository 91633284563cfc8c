"""`SharedRateLimiter`: limiters on separate store connections (as separate processes have)
together keep one ceiling, use most of it, and a 429 seen by one slows them all; on both
backends."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from streamsync.adapters.ratelimit import yielding
from streamsync.adapters.shared_ratelimit import SharedRateLimiter
from tests.store_backends import StoreSpace

KEY = "iterable:test:bulkUpdate"
RATE = 20.0


async def _hammer(limiter: SharedRateLimiter, until: float, sent: list[float]) -> None:
    async def caller() -> None:
        while time.monotonic() < until:
            async with limiter.slot():
                sent.append(time.monotonic())
                await asyncio.sleep(0.01)  # the request

    await asyncio.gather(*(caller() for _ in range(limiter.max_in_flight)))


def _max_in_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_limiters_on_separate_connections_share_one_ceiling(
        store_space: StoreSpace) -> None:
    async with await store_space.open() as one, await store_space.open() as two:
        service = SharedRateLimiter(RATE, booker=one, budget_key=KEY, kind="service")
        backfill = SharedRateLimiter(RATE, booker=two, budget_key=KEY, kind="backfill")
        sent_service: list[float] = []
        sent_backfill: list[float] = []
        start = time.monotonic()
        until = start + 2.5
        await asyncio.gather(_hammer(service, until, sent_service),
                             _hammer(backfill, until, sent_backfill))
        assert {d.kind for u in await one.budgets_in_use() for d in u.drawers} == {
            "service", "backfill"}
    sent = sent_service + sent_backfill
    # Each limiter alone would send 20/s (40/s together). One ceiling: 20 per second, give or
    # take the few slots a busy event loop sends late next to the ones on time (Iterable's
    # own bucket holds a second's worth).
    assert _max_in_window(sent, 1.0) <= 1.25 * RATE
    assert len(sent) <= RATE * (max(sent) - min(sent)) + 3
    measured = [t for t in sent if start + 0.5 <= t < until]
    assert len(measured) / 2.0 >= 0.9 * RATE
    # both got a part: neither starves the other
    assert len(sent_service) >= 0.3 * len(sent) and len(sent_backfill) >= 0.2 * len(sent)
    # slots are booked for requests waiting for one: none passes unused
    assert service.slots_wasted + backfill.slots_wasted <= 2


async def test_a_429_seen_by_one_process_pauses_the_others(store_space: StoreSpace) -> None:
    async with await store_space.open() as one, await store_space.open() as two:
        first = SharedRateLimiter(RATE, booker=one, budget_key=KEY, kind="service")
        second = SharedRateLimiter(RATE, booker=two, budget_key=KEY, kind="backfill")
        await first.acquire()
        first.on_rate_limited(retry_after_s=1.5)
        limited_at = time.monotonic()
        # its next booking pushes the whole budget back by the Retry-After
        again = asyncio.create_task(first.acquire())
        await asyncio.sleep(0.1)
        await second.acquire()
        assert time.monotonic() - limited_at >= 1.4
        await again
        assert first.rate_limited_total == 1


async def test_a_yielding_caller_never_takes_a_slot_ahead_of_one_that_is_not(
        store_space: StoreSpace) -> None:
    async with await store_space.open() as store:
        limiter = SharedRateLimiter(5.0, booker=store, budget_key=KEY, kind="service")
        granted: list[str] = []

        async def take(name: str, background: bool) -> None:
            with yielding() if background else contextlib.nullcontext():
                await limiter.acquire()
            granted.append(name)

        resync = [asyncio.create_task(take(f"resync{i}", True)) for i in range(3)]
        await asyncio.sleep(0.05)  # the re-sync's callers were waiting first
        await take("realtime", False)
        await asyncio.gather(*resync)
    # The first re-sync caller took the slot due at once; real time the next one, ahead of
    # the re-sync callers that waited longer (in arrival order it would have come last).
    assert granted[:2] == ["resync0", "realtime"]
    assert sorted(granted[2:]) == ["resync1", "resync2"]


async def test_yielding_callers_alone_use_the_whole_budget(store_space: StoreSpace) -> None:
    async with await store_space.open() as store:
        limiter = SharedRateLimiter(RATE, booker=store, budget_key=KEY, kind="service")
        sent: list[float] = []
        start = time.monotonic()
        until = start + 2.5
        with yielding():
            await _hammer(limiter, until, sent)
    measured = [t for t in sent if start + 0.5 <= t < until]
    assert len(measured) / 2.0 >= 0.9 * RATE
    assert _max_in_window(sent, 1.0) <= 1.25 * RATE


async def test_closing_a_limiter_removes_it_from_the_drawers(store_space: StoreSpace) -> None:
    async with await store_space.open() as store:
        limiter = SharedRateLimiter(RATE, booker=store, budget_key=KEY, kind="service")
        await limiter.acquire()
        [use] = await store.budgets_in_use()
        assert [d.drawer_id for d in use.drawers] == [limiter.drawer.drawer_id]
        await limiter.close()
        [use] = await store.budgets_in_use()
        assert use.drawers == ()


def test_reserve_is_refused() -> None:
    limiter = SharedRateLimiter(RATE, booker=None, budget_key=KEY,  # type: ignore[arg-type]
                                kind="service")
    with pytest.raises(TypeError):
        limiter.reserve()


async def test_a_process_books_slots_only_for_requests_that_wait_for_one(
        store_space: StoreSpace) -> None:
    """One request at a time with work between (a flush reading Salesforce): each claim books
    the one slot asked for. A slot booked ahead for a request not ready yet would pass unused,
    a slot another process's ready request could not have."""
    rate = 5.0
    async with await store_space.open() as store:
        limiter = SharedRateLimiter(rate, booker=store, budget_key=KEY, kind="service")
        for _ in range(4):
            await limiter.acquire()
            await asyncio.sleep(0.45)  # the request, then the next batch's reading
        assert limiter.granted_total == 4
        assert limiter.slots_wasted == 0
        [use] = await store.budgets_in_use()
        [drawer] = use.drawers
        assert drawer.slots_total == 4


async def test_callers_that_wait_meanwhile_are_booked_in_one_claim(
        store_space: StoreSpace) -> None:
    """A busy process books a slice per store round trip: the callers that came while a claim
    was under way are booked together by the next one, and nobody else."""
    async with await store_space.open() as store:
        limiter = SharedRateLimiter(RATE, booker=store, budget_key=KEY, kind="service")
        await asyncio.gather(*(limiter.acquire() for _ in range(4)))
        assert (limiter.claims_total, limiter.granted_total) == (2, 4)
        [use] = await store.budgets_in_use()
        [drawer] = use.drawers
        assert drawer.slots_total == 4
