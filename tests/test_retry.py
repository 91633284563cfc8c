"""streamsync/retry.py: the one retry mechanism (stamina) and the one jitter function."""

from __future__ import annotations

import asyncio

import pytest
import stamina

from streamsync.errors import (
    AuthError,
    FatalError,
    RateLimited,
    RecordError,
    Stopped,
    TransientError,
)
from streamsync.retry import NO_RETRY, Policy, jitter, retry_after_of


def _failing(errors: list[Exception]) -> tuple[list[int], object]:
    calls = [0]

    async def fn() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return "done"

    return calls, fn


async def test_backs_off_exponentially_then_succeeds(retry_waits: list[float]) -> None:
    calls, fn = _failing([TransientError("a"), TransientError("b"), TransientError("c")])
    policy = Policy(attempts=5, wait_initial_s=0.5, wait_max_s=30.0)
    assert await policy.call(fn) == "done"  # type: ignore[arg-type]
    assert calls[0] == 4
    # stamina: initial * 2^(n-1) plus up to wait_initial_s of jitter
    for n, wait in enumerate(retry_waits, start=1):
        assert 0.5 * 2 ** (n - 1) <= wait <= 0.5 * 2 ** (n - 1) + 0.5
    assert len(retry_waits) == 3


async def test_gives_up_after_the_attempts_with_the_last_error(retry_waits: list[float]) -> None:
    calls, fn = _failing([TransientError(f"boom {n}") for n in range(1, 10)])
    with pytest.raises(TransientError, match="boom 3"):
        await Policy(attempts=3).call(fn)  # type: ignore[arg-type]
    assert calls[0] == 3 and len(retry_waits) == 2


async def test_caps_the_backoff_and_honours_retry_after(retry_waits: list[float]) -> None:
    errors: list[Exception] = [TransientError("a"), TransientError("b"), TransientError("c"),
                               RateLimited("slow down", retry_after_s=7.0)]
    _, fn = _failing(errors)
    assert await Policy(attempts=10, wait_initial_s=1.0, wait_max_s=3.0).call(fn) == "done"  # type: ignore[arg-type]
    assert all(w <= 3.0 for w in retry_waits[:3])
    assert 7.0 <= retry_waits[3] <= 8.0  # Retry-After 7 plus at most wait_initial_s of jitter


async def test_a_retry_after_beyond_the_budget_fails_at_once(retry_waits: list[float]) -> None:
    calls, fn = _failing([RateLimited("wait", retry_after_s=100.0)])
    with pytest.raises(RateLimited):
        await Policy(attempts=10, timeout_s=60.0).call(fn)  # type: ignore[arg-type]
    assert calls[0] == 1 and retry_waits == []


async def test_fatal_and_record_errors_are_not_retried(retry_waits: list[float]) -> None:
    for error in (AuthError("no"), RecordError("invalid_email"), FatalError("stop")):
        calls, fn = _failing([error])
        with pytest.raises(type(error)):
            await Policy(attempts=5).call(fn)  # type: ignore[arg-type]
        assert calls[0] == 1
    assert retry_waits == []


async def test_no_retry_calls_once() -> None:
    calls, fn = _failing([TransientError("x")])
    with pytest.raises(TransientError):
        await NO_RETRY.call(fn)  # type: ignore[arg-type]
    assert calls[0] == 1


async def test_the_global_test_switch_removes_every_wait(retry_waits: list[float]) -> None:
    calls, fn = _failing([RateLimited("a", retry_after_s=30.0), TransientError("b")])
    with stamina.set_testing(True, attempts=100, cap=True):
        assert await Policy(attempts=3).call(fn) == "done"  # type: ignore[arg-type]
    assert calls[0] == 3 and all(w == 0 for w in retry_waits)


def test_jitter_spreads_within_its_bounds() -> None:
    values = [jitter(4.0, floor_s=1.0) for _ in range(500)]
    assert all(1.0 <= v <= 4.0 for v in values)
    assert max(values) - min(values) > 2.0
    assert jitter(0.0) == 0.0 and jitter(2.0, floor_s=2.0) == 2.0


def test_retry_after_of_reads_only_a_positive_typed_wait() -> None:
    assert retry_after_of(RateLimited("x", retry_after_s=3)) == 3.0
    assert retry_after_of(RateLimited("x")) is None
    assert retry_after_of(RateLimited("x", retry_after_s=0)) is None
    assert retry_after_of(ValueError("x")) is None


def test_policy_validates_its_settings() -> None:
    with pytest.raises(ValueError):
        Policy(attempts=0)
    with pytest.raises(ValueError):
        Policy(wait_initial_s=-1)
    with pytest.raises(ValueError):
        Policy(timeout_s=0)


async def test_stop_ends_the_wait_at_once_and_lets_an_attempt_finish() -> None:
    stop = asyncio.Event()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        raise TransientError("down")

    policy = Policy(attempts=None, timeout_s=None, wait_initial_s=30.0, wait_max_s=30.0)
    task = asyncio.create_task(policy.call(failing, stop))
    while calls == 0:
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    stop.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(task, 1.0)  # not after the 30-second wait
    assert calls == 1

    started = asyncio.Event()
    stop = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(0.05)
        return "done"

    task = asyncio.create_task(policy.call(slow, stop))
    await started.wait()
    stop.set()
    assert await task == "done"
    with pytest.raises(Stopped):
        await policy.call(slow, stop)  # already stopped: no attempt starts


async def test_on_retry_is_told_of_every_retried_failure(retry_waits: list[float]) -> None:
    seen: list[Exception] = []
    _, fn = _failing([TransientError("a"), RateLimited("b", retry_after_s=1.0)])
    assert await Policy(attempts=3, on_retry=seen.append).call(fn) == "done"  # type: ignore[arg-type]
    assert [str(e) for e in seen] == ["a", "b"] and len(retry_waits) == 2


async def test_each_scheduled_retry_is_logged_with_its_call_name_and_typed_fields(
        retry_waits: list[float], caplog: pytest.LogCaptureFixture) -> None:
    _, fn = _failing([RateLimited("slow", api="iterable", endpoint="bulkUpdate", status=429,
                                  retry_after_s=2.0)])
    caplog.set_level("INFO", logger="streamsync.retry")
    assert await Policy(name="writer", attempts=2).call(fn) == "done"  # type: ignore[arg-type]
    [record] = [r for r in caplog.records if r.getMessage() == "retry.scheduled"]
    fields = record.fields  # type: ignore[attr-defined]
    assert (fields["call"], fields["attempt"], fields["error"], fields["api"],
            fields["endpoint"], fields["status"], fields["retry_after_s"]) == (
        "writer", 1, "RateLimited", "iterable", "bulkUpdate", 429, 2.0)
    assert 2.0 <= fields["wait_s"] <= 2.5
