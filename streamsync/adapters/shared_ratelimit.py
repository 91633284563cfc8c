"""A rate limiter drawing its send slots from a budget shared through the store, so every
process on one store (the service's workers, backfills) together keeps one Iterable ceiling.

Each process books a few slots at a time in one store transaction (`SlotBooker.claim_slots`:
the schedule and its fairness rule are `adapters/store/budget_plan.py`) and paces its requests
at those times; the in-flight cap and the slow-down after a 429 are the local `RateLimiter`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from streamsync.adapters.ratelimit import RateLimiter, is_yielding
from streamsync.adapters.store.budget import DrawerIdentity
from streamsync.adapters.store.budget_plan import Booking, ClaimRequest, DrawerKind
from streamsync.errors import StreamsyncError, TransientError
from streamsync.logs import get_logger

log = get_logger(__name__)

SLICE_S: Final = 0.8
"""A claim books at most this long's worth of the ceiling (4 slots at 5 requests/s)."""
CLAIM_RETRY_S: Final = 0.5
"""After a failed claim (the store busy), wait this long before claiming again."""


class SlotBooker(Protocol):
    """The store's side of the budget (adapters/store/budget.py `BudgetOps`)."""

    async def claim_slots(self, budget_key: str, drawer: DrawerIdentity,
                          req: ClaimRequest) -> Booking: ...

    async def leave_budget(self, budget_key: str, drawer_id: str) -> None: ...


class SharedRateLimiter(RateLimiter):
    """A `RateLimiter` whose send slots come from the shared budget `budget_key`.

    A claim asks for a slot per caller waiting for one (up to a slice), never for callers that
    may come: with several processes on one budget, a slot booked ahead for a request that is
    not ready yet is a slot another process's ready request could not have (it was seen
    dropped unused, a gap in the drain of a burst). A busy process still books a slice per
    store round trip: all its waiting callers at once. A slot not used within one interval of
    its time is dropped, never saved up (that would bunch requests). A 429 clears the slots
    booked and pushes the whole budget back by the Retry-After (or one interval), for every
    process.

    A caller takes the earliest slot booked as it arrives; one inside `yielding()` waits until
    the earliest slot is due and takes it only if nobody took it first, so it never delays a
    caller that is not yielding by more than the slot it is sending in.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        booker: SlotBooker,
        budget_key: str,
        kind: DrawerKind,
        max_in_flight: int = 4,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(rate_per_s, max_in_flight=max_in_flight, clock=clock, sleep=sleep)
        self.booker = booker
        self.budget_key = budget_key
        self.drawer = DrawerIdentity(uuid.uuid4().hex[:12], kind, os.getpid(),
                                     socket.gethostname())
        self.max_slice = max(1, math.ceil(rate_per_s * SLICE_S))
        self._slots: collections.deque[float] = collections.deque()  # local clock, ascending
        self._booking = asyncio.Lock()
        self._waiting = 0  # callers in acquire()
        self._holding = 0  # of which: holding a slot, sleeping until its time
        self._pause_s = 0.0
        self.claims_total = 0
        self.slots_wasted = 0

    def reserve(self) -> float:
        raise TypeError("a SharedRateLimiter books slots through the store: use acquire()")

    async def acquire(self) -> None:
        """Wait for a send slot booked in the shared budget (the earliest free one, or inside
        `yielding()` the earliest one still free when it is due)."""
        yielding = is_yielding()
        self._waiting += 1
        try:
            while True:
                now = self._clock()
                at = self._take(now, due_only=yielding)
                if at is not None:
                    self.granted_total += 1
                    wait = max(at, self._blocked_until) - now
                    if wait > 0:
                        self._holding += 1
                        try:
                            await self._sleep(wait)
                        finally:
                            self._holding -= 1
                    return
                if self._slots:  # yielding: the next slot is not due yet
                    await self._sleep(self._slots[0] - now)
                    continue
                await self._refill()
        finally:
            self._waiting -= 1

    def _take(self, now: float, *, due_only: bool = False) -> float | None:
        """The earliest slot not too late to use (with `due_only`, only if its time has
        come); slots past use are dropped."""
        late = 1.0 / self.current_rate_per_s(now)
        while self._slots:
            at = self._slots[0]
            if at >= now - late:
                if due_only and at > now:
                    return None
                return self._slots.popleft()
            self._slots.popleft()
            self.slots_wasted += 1
        return None

    async def _refill(self) -> None:
        async with self._booking:
            if self._slots:
                return  # another caller booked while this one waited for the lock
            want = min(self.max_slice, max(1, self._waiting - self._holding))
            req = ClaimRequest(self.drawer.kind, want, self.current_rate_per_s(),
                               pause_s=self._pause_s)
            try:
                booking = await self.booker.claim_slots(self.budget_key, self.drawer, req)
            except TransientError as exc:
                log.warning("ratelimit.claim_failed", budget=self.budget_key, error=str(exc))
                await self._sleep(CLAIM_RETRY_S)
                return
            self._pause_s = 0.0
            self.claims_total += 1
            offset = self._clock() - booking.now  # store clock → local clock
            if booking.slots:
                self._slots.extend(at + offset for at in booking.slots)
            elif booking.retry_at is not None:
                await self._sleep(max(0.0, booking.retry_at - booking.now))

    def on_rate_limited(self, retry_after_s: float | None = None) -> None:
        """A 429: slow down locally (`RateLimiter`) and push the shared budget back."""
        super().on_rate_limited(retry_after_s)
        self.slots_wasted += len(self._slots)
        self._slots.clear()
        pause = retry_after_s if retry_after_s else 1.0 / self.current_rate_per_s()
        self._pause_s = max(self._pause_s, pause)

    async def close(self) -> None:
        """Stop drawing: forget this process in the budget's drawers (best effort)."""
        with contextlib.suppress(StreamsyncError):
            await self.booker.leave_budget(self.budget_key, self.drawer.drawer_id)
