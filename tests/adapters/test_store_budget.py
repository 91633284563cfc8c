"""The shared rate budget in the store, on both backends: bookings through several processes'
connections never overlap, and `budgets_in_use` says who draws how much."""

from __future__ import annotations

import asyncio
import os

from streamsync.adapters.store import ClaimRequest, DrawerIdentity, StoreAPI
from tests.store_backends import StoreSpace

KEY = "iterable:test:bulkUpdate"
RATE = 50.0


async def _book(store: StoreAPI, drawer: DrawerIdentity, slots_wanted: int) -> list[float]:
    got: list[float] = []
    while len(got) < slots_wanted:
        booking = await store.claim_slots(KEY, drawer, ClaimRequest(drawer.kind, 4, RATE))
        got.extend(booking.slots)
        if not booking.slots:
            assert booking.retry_at is not None
            await asyncio.sleep(max(0.0, booking.retry_at - booking.now))
    return got


async def test_bookings_through_two_connections_never_overlap(store_space: StoreSpace) -> None:
    async with await store_space.open() as one, await store_space.open() as two:
        drawers = [DrawerIdentity(f"d{i}", kind, os.getpid(), "host")
                   for i, kind in enumerate(("service", "backfill", "service", "backfill"))]
        stores = [one, two, one, two]
        booked = await asyncio.gather(*(_book(s, d, 40) for s, d in zip(stores, drawers,
                                                                          strict=True)))
        [use] = await one.budgets_in_use()
    # status: the rate being booked, by the four drawers together, is the ceiling's
    assert 0.7 * RATE <= use.drawing_per_s <= 1.2 * RATE, use
    assert len(use.drawers) == 4
    slots = sorted(t for times in booked for t in times)
    assert len(slots) >= 160
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert min(gaps) >= 1.0 / RATE - 1e-6  # the store's clock is milliseconds: slots are exact
    # together at the ceiling: 160 slots take 160 intervals, give or take the start
    assert slots[-1] - slots[0] <= (len(slots) + 5) / RATE


async def test_budgets_in_use_name_the_drawers_and_their_rates(store_space: StoreSpace) -> None:
    async with await store_space.open() as store:
        assert await store.budgets_in_use() == []
        service = DrawerIdentity("svc", "service", 101, "alpha")
        backfill = DrawerIdentity("bf", "backfill", 202, "beta")
        await _book(store, service, 30)
        await _book(store, backfill, 10)
        [use] = await store.budgets_in_use()
        assert use.budget_key == KEY and use.ceiling_per_s == RATE
        by_id = {d.drawer_id: d for d in use.drawers}
        assert by_id["svc"].kind == "service" and by_id["svc"].pid == 101
        assert by_id["svc"].host == "alpha" and by_id["svc"].slots_total >= 30
        assert by_id["bf"].kind == "backfill" and by_id["bf"].slots_total >= 10
        assert 0 < use.drawing_per_s and 0 < use.used_fraction
        await store.leave_budget(KEY, "svc")
        [use] = await store.budgets_in_use()
        assert [d.drawer_id for d in use.drawers] == ["bf"]
