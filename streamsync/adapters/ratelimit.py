"""An evenly spacing asyncio rate limiter with adaptive slow-down on 429 and an in-flight cap."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar

from streamsync.logs import get_logger

log = get_logger(__name__)

_YIELDING: ContextVar[bool] = ContextVar("streamsync_ratelimit_yielding", default=False)


@contextlib.contextmanager
def yielding() -> Iterator[None]:
    """Requests made inside this block (and in tasks it starts) yield to the others: each takes
    a send slot only when the slot is due and no other caller has taken it, so a background
    pass (a re-sync) uses what real-time sync leaves and never queues ahead of it. The shared
    limiter (adapters/shared_ratelimit.py) honours it; the local one sends in arrival order."""
    token = _YIELDING.set(True)
    try:
        yield
    finally:
        _YIELDING.reset(token)


def is_yielding() -> bool:
    """Whether the current task runs inside `yielding()`."""
    return _YIELDING.get()


class RateLimiter:
    """Shared by every writer of one API: at most `rate_per_s` requests per second, spaced evenly
    (a generic cell-rate algorithm: `burst` requests may go back to back after an idle spell),
    and at most `max_in_flight` requests outstanding.

    On a 429 the rate halves (never below `min_rate_per_s`) and nobody sends before the server's
    Retry-After has passed; the rate then climbs back linearly to the target over `recover_s`.
    `clock` and `sleep` are injectable so tests run without real time passing.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        burst: int = 1,
        max_in_flight: int = 4,
        min_rate_per_s: float | None = None,
        recover_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if recover_s <= 0:
            raise ValueError(f"recover_s must be positive, got {recover_s}")
        self.target_rate_per_s = rate_per_s
        self.burst = burst
        self.max_in_flight = max_in_flight
        self.min_rate_per_s = min_rate_per_s if min_rate_per_s is not None else rate_per_s / 16
        self.recover_s = recover_s
        self._clock = clock
        self._sleep = sleep
        self._semaphore = asyncio.Semaphore(max_in_flight)
        self._tat = clock()  # theoretical arrival time of the next request
        self._cut_rate: float | None = None  # rate right after the last 429
        self._cut_at = 0.0
        self._blocked_until = 0.0
        self._in_flight = 0
        self.rate_limited_total = 0
        self.granted_total = 0

    def current_rate_per_s(self, now: float | None = None) -> float:
        """The allowed rate at `now`: the target, or a reduced rate recovering toward it."""
        if self._cut_rate is None:
            return self.target_rate_per_s
        now = self._clock() if now is None else now
        progress = (now - self._cut_at) / self.recover_s
        if progress >= 1.0:
            self._cut_rate = None
            return self.target_rate_per_s
        span = self.target_rate_per_s - self._cut_rate
        return self._cut_rate + span * max(0.0, progress)

    def reserve(self) -> float:
        """Reserve the next send slot now; return how many seconds to wait before using it."""
        now = self._clock()
        interval = 1.0 / self.current_rate_per_s(now)
        tolerance = (self.burst - 1) * interval
        start = max(now, self._tat - tolerance, self._blocked_until)
        self._tat = max(self._tat, start) + interval
        self.granted_total += 1
        return start - now

    async def acquire(self) -> None:
        """Wait for this caller's send slot (does not take an in-flight place)."""
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold an in-flight place, then wait for a send slot; release the place on exit."""
        async with self._semaphore:
            self._in_flight += 1
            try:
                await self.acquire()
                yield
            finally:
                self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        """Callers currently holding an in-flight place."""
        return self._in_flight

    def on_rate_limited(self, retry_after_s: float | None = None) -> None:
        """The server answered 429: halve the rate and respect its Retry-After.

        The requests that were already in flight when the rate was cut answer 429 too; like
        TCP's one decrease per round trip, those within one interval of the last cut only count
        (and extend Retry-After), so a burst of in-flight 429s halves the rate once, not 4×.
        """
        now = self._clock()
        self.rate_limited_total += 1
        if retry_after_s is not None and retry_after_s > 0:
            self._blocked_until = max(self._blocked_until, now + retry_after_s)
        if self._cut_rate is not None and now - self._cut_at < 1.0 / self._cut_rate:
            return
        reduced = max(self.min_rate_per_s, self.current_rate_per_s(now) / 2)
        self._cut_rate = reduced
        self._cut_at = now
        # Requests already reserved at the old spacing are pushed out to the new spacing.
        self._tat = max(self._tat, now + 1.0 / reduced)
        log.warning(
            "ratelimit.slow_down",
            rate_per_s=round(reduced, 3),
            retry_after_s=retry_after_s,
            rate_limited_total=self.rate_limited_total,
        )
