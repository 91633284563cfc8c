"""IterableWriter against the Iterable emulator: splitting, in-flight bound, Retry-After, and
per-user failure attribution."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamsync.adapters.http import make_session
from streamsync.adapters.iterable import IterableClient, parse_bulk_result
from streamsync.adapters.ratelimit import RateLimiter
from streamsync.core.batching import BatchCutter, cut_batches
from streamsync.core.mapping import payload_hash
from streamsync.emulators.iterable import IterableEmulator
from streamsync.models import MappedUser
from streamsync.retry import Policy
from streamsync.runtime.writer import IterableWriter, attribute_failures


def user(n: int, **data: Any) -> MappedUser:
    payload = {"email": f"user{n}@example.com", "dataFields": {"n": n, **data}}
    return MappedUser("Contact", f"003000000000{n:03d}AAA", f"user{n}@example.com", None,
                      payload, payload_hash(payload))


class Sleeps:
    """A sleep that records delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


@pytest.fixture
async def iterable(iterable_emulator: IterableEmulator) -> AsyncIterator[IterableClient]:
    async with make_session(5.0) as session:
        yield IterableClient(session, iterable_emulator.base_url, iterable_emulator.api_key)


@pytest.mark.iterable(max_body_bytes=3000)
async def test_too_large_batches_are_halved_and_an_oversized_user_dead_lettered(
        iterable: IterableClient, iterable_emulator: IterableEmulator) -> None:
    users = [user(i, note="x" * 150) for i in range(16)] + [user(99, note="y" * 4000)]
    cutter = BatchCutter()
    for u in users:
        assert cutter.add(u) is None
    batch = cutter.flush()
    assert batch is not None
    out = await IterableWriter(iterable).write_batch(batch)
    assert sorted(u.sf_id for u in out.synced) == sorted(u.sf_id for u in users[:16])
    assert [(u.sf_id, reason) for u, reason, _ in out.dead] == [(users[16].sf_id, "too_large")]
    assert out.retry == []
    iterable_emulator.flush()
    assert len(iterable_emulator.state.snapshot()) == 16


async def test_requests_in_flight_stay_bounded(iterable: IterableClient,
                                               iterable_emulator: IterableEmulator) -> None:
    iterable_emulator.faults.slow_next("/api/users/bulkUpdate", times=8, delay_s=0.05)
    # The one in-flight cap of Iterable is its client's RateLimiter; the writer has none.
    iterable.bulk_limiter = RateLimiter(1000.0, burst=8, max_in_flight=2)
    writer = IterableWriter(iterable)
    in_flight = peak = 0
    real = iterable._call

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await real(*args, **kwargs)
        finally:
            in_flight -= 1

    iterable._call = counting  # type: ignore[method-assign]
    batches, _ = cut_batches([user(i) for i in range(16)], max_users=2)
    out = await writer.write(batches)
    assert len(out.synced) == 16 and out.requests == 8
    assert peak == 2


@pytest.mark.iterable(retry_after=2)
async def test_retry_after_is_honoured_then_records_are_given_back(
        iterable: IterableClient, iterable_emulator: IterableEmulator,
        retry_waits: list[float]) -> None:
    sleeps = Sleeps()
    limiter = RateLimiter(1000.0, sleep=sleeps)
    iterable.bulk_limiter = limiter
    writer = IterableWriter(iterable,
                            policy=Policy(attempts=2, wait_initial_s=0.01))
    iterable_emulator.faults.fail_next("/api/users/bulkUpdate", times=2, status=429,
                                       headers={"Retry-After": "2"})
    batches, _ = cut_batches([user(1), user(2)])
    out = await writer.write(batches)
    assert out.synced == [] and len(out.retry) == 2
    assert (out.requests, out.rate_limited) == (2, 2)
    assert 2.0 <= max(retry_waits) <= 2.01  # the writer waited the Retry-After, in place
    assert limiter.rate_limited_total == 2
    again = await writer.write(batches)
    assert len(again.synced) == 2


def test_per_user_failures_map_back_to_every_record_with_that_key() -> None:
    twin_a, twin_b, other = user(1), user(1), user(2)
    result = parse_bulk_result({"successCount": 1, "failCount": 2,
                                "failedUpdates": {"invalidDataEmails": ["USER1@example.com"]}})
    ok, failed = attribute_failures([twin_a, twin_b, other], result)
    assert ok == [other]
    assert [(u, reason) for u, reason, _ in failed] == [(twin_a, "invalid_data"),
                                                        (twin_b, "invalid_data")]
