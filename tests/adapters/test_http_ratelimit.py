"""The shared rate limiter: even spacing, burst, adaptive slow-down on 429, in-flight cap."""

from __future__ import annotations

import asyncio

import pytest

from streamsync.adapters.ratelimit import RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        # Concurrent sleepers wake at their own target times, not at the sum of their delays.
        target = self.now + delay_s
        await asyncio.sleep(0)
        self.now = max(self.now, target)


def _limiter(fake: FakeTime, rate: float = 5.0, **kw: object) -> RateLimiter:
    return RateLimiter(rate, clock=fake.clock, sleep=fake.sleep, **kw)  # type: ignore[arg-type]


def test_requests_are_spaced_evenly() -> None:
    fake = FakeTime()
    limiter = _limiter(fake, 5.0)
    delays = [limiter.reserve() for _ in range(6)]
    assert delays == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_burst_lets_a_few_go_back_to_back_after_idle_but_no_more() -> None:
    fake = FakeTime()
    limiter = _limiter(fake, 5.0, burst=3)
    delays = [limiter.reserve() for _ in range(5)]
    assert delays == pytest.approx([0.0, 0.0, 0.0, 0.2, 0.4])
    fake.now += 60.0  # a long idle spell earns no more than `burst`
    delays = [limiter.reserve() for _ in range(4)]
    assert delays == pytest.approx([0.0, 0.0, 0.0, 0.2])


def test_a_429_halves_the_rate_waits_for_retry_after_then_recovers() -> None:
    fake = FakeTime()
    limiter = _limiter(fake, 4.0, recover_s=10.0)
    assert limiter.reserve() == 0.0
    fake.now += 1.0
    limiter.on_rate_limited(retry_after_s=3.0)
    assert limiter.current_rate_per_s() == pytest.approx(2.0)
    assert limiter.rate_limited_total == 1
    first = limiter.reserve()
    assert first == pytest.approx(3.0)  # nobody sends before Retry-After has passed
    second = limiter.reserve()
    assert second - first == pytest.approx(0.5)  # the halved rate: 2/s
    fake.now += 5.0
    assert limiter.current_rate_per_s() == pytest.approx(3.0)  # halfway back
    fake.now += 5.0
    assert limiter.current_rate_per_s() == pytest.approx(4.0)
    fake.now += 100.0
    assert [limiter.reserve() for _ in range(2)] == pytest.approx([0.0, 0.25])


def test_repeated_429s_keep_halving_down_to_the_floor() -> None:
    fake = FakeTime()
    limiter = _limiter(fake, 8.0, min_rate_per_s=1.0, recover_s=1000.0)
    for expected in (4.0, 2.0, 1.0, 1.0):
        limiter.on_rate_limited()
        assert limiter.current_rate_per_s() == pytest.approx(expected, rel=0.01)
        fake.now += 1.0 / expected  # the next 429 comes a round later


def test_429s_of_requests_already_in_flight_halve_the_rate_once() -> None:
    fake = FakeTime()
    limiter = _limiter(fake, 8.0, recover_s=1000.0)
    for _ in range(4):  # four requests in flight all answer 429 within one interval
        limiter.on_rate_limited()
        fake.now += 0.05
    assert limiter.current_rate_per_s() == pytest.approx(4.0, rel=0.01)
    assert limiter.rate_limited_total == 4


async def test_slot_bounds_requests_in_flight() -> None:
    fake = FakeTime()
    limiter = _limiter(fake, 1000.0, max_in_flight=2)
    release = asyncio.Event()
    peak = 0

    async def worker() -> None:
        nonlocal peak
        async with limiter.slot():
            peak = max(peak, limiter.in_flight)
            await release.wait()

    tasks = [asyncio.create_task(worker()) for _ in range(5)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert limiter.in_flight == 2
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2 and limiter.in_flight == 0
    assert limiter.granted_total == 5


async def test_spacing_never_trips_a_server_bucket_of_the_same_rate() -> None:
    """A token bucket of 5/s (capacity 5), as Iterable and its emulator enforce, never refuses
    a client spaced by this limiter at 5/s, even with many concurrent writers."""
    fake = FakeTime()
    limiter = _limiter(fake, 5.0, max_in_flight=8)
    capacity, tokens, last = 5.0, 5.0, fake.now
    refused = 0
    sent: list[float] = []

    async def writer() -> None:
        nonlocal tokens, last, refused
        for _ in range(25):
            async with limiter.slot():
                now = fake.now
                tokens = min(capacity, tokens + (now - last) * 5.0)
                last = now
                if tokens >= 1.0 - 1e-9:
                    tokens -= 1.0
                else:
                    refused += 1
                sent.append(now)

    await asyncio.gather(*(writer() for _ in range(4)))
    assert refused == 0
    assert len(sent) == 100
    span = max(sent) - min(sent)
    assert 100 / span == pytest.approx(5.0, rel=0.02)  # near the ceiling, not below it


def test_invalid_settings_are_refused() -> None:
    for kwargs in ({"rate_per_s": 0}, {"rate_per_s": 1, "burst": 0},
                   {"rate_per_s": 1, "max_in_flight": 0}, {"rate_per_s": 1, "recover_s": 0}):
        with pytest.raises(ValueError):
            RateLimiter(**kwargs)  # type: ignore[arg-type]
