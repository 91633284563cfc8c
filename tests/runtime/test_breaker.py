"""Circuit breaker per destination: opens on failures in a row, one probe at a time, closes on
any answer (a fake clock), and the writer reporting to it over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from streamsync.adapters.http import make_session
from streamsync.adapters.iterable import IterableClient
from streamsync.core.batching import cut_batches
from streamsync.core.mapping import payload_hash
from streamsync.emulators.iterable import IterableEmulator
from streamsync.errors import CircuitOpen
from streamsync.logs import redactor
from streamsync.models import MappedUser
from streamsync.retry import Policy
from streamsync.runtime.breaker import Breakers, CircuitBreaker, Signals
from streamsync.runtime.writer import IterableWriter
from tests.conftest import FakeClock

T0 = 1_780_000_000.0


def make(clock: FakeClock, **kw: float) -> CircuitBreaker:
    opts = {"failures_to_open": 3, "base_s": 1.0, "max_s": 4.0, **kw}
    return CircuitBreaker("Iterable", failures_to_open=int(opts["failures_to_open"]),
                          base_s=opts["base_s"], max_s=opts["max_s"], clock=clock)


def test_opens_only_after_failures_in_a_row() -> None:
    clock = FakeClock(T0)
    breaker = make(clock)
    breaker.failure("503")
    breaker.failure("503")
    assert breaker.success() is False  # an answer in between: the run starts over
    breaker.failure("503")
    breaker.failure("503")
    assert (breaker.state, breaker.admit()) == ("closed", "call")
    breaker.failure("503")
    assert breaker.state == "open"
    assert breaker.admit() is None
    assert breaker.wait_s() == pytest.approx(1.0)


def test_one_probe_at_a_time_then_a_failed_probe_doubles_the_wait_up_to_the_cap() -> None:
    clock = FakeClock(T0)
    breaker = make(clock, failures_to_open=1)
    breaker.failure("connection refused")
    waits = []
    for _ in range(4):
        clock.advance(breaker.wait_s())
        assert breaker.admit() == "probe"
        assert breaker.admit() is None  # the probe is in flight: nobody else goes
        breaker.failure("connection refused")
        waits.append(breaker.wait_s())
    assert waits == [2.0, 4.0, 4.0, 4.0]


def test_an_answer_to_the_probe_closes_and_reports_the_end_of_the_outage() -> None:
    clock = FakeClock(T0)
    breaker = make(clock, failures_to_open=2)
    breaker.failure("a")
    clock.advance(0.5)
    breaker.failure("b")
    clock.advance(1.0)
    assert breaker.admit() == "probe"
    assert breaker.success() is True
    assert (breaker.state, breaker.failures, breaker.down_since) == ("closed", 0, None)
    assert breaker.admit() == "call"
    assert breaker.success() is False  # not an outage that ended


def test_an_inconclusive_probe_lets_the_next_caller_probe_at_once() -> None:
    clock = FakeClock(T0)
    breaker = make(clock, failures_to_open=1)
    breaker.failure("x")
    clock.advance(1.0)
    assert breaker.admit() == "probe"
    breaker.inconclusive()
    assert breaker.admit() == "probe"


def test_describe_names_the_destination_since_when_and_the_last_error() -> None:
    clock = FakeClock(1_764_900_000.0)  # 2025-12-05T02:00:00Z
    breaker = make(clock)
    assert breaker.describe() == ""
    for _ in range(3):
        breaker.failure("iterable bulkUpdate: HTTP 503 GenericError: Service unavailable")
        clock.advance(2.0)
    assert breaker.describe() == (
        "Iterable unreachable since 2025-12-05T02:00:00Z (3 failed calls in a row; last error: "
        "iterable bulkUpdate: HTTP 503 GenericError: Service unavailable)")


def test_describe_masks_known_secrets_in_the_error() -> None:
    redactor().add("it-key-breaker-test-0123")
    breaker = make(FakeClock(T0), failures_to_open=1)
    breaker.failure("iterable refused key it-key-breaker-test-0123 with 503")
    assert "it-key-breaker-test-0123" not in breaker.describe()
    assert "[redacted]" in breaker.describe()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="failures_to_open"):
        CircuitBreaker("x", failures_to_open=0)
    with pytest.raises(ValueError, match="base_s"):
        CircuitBreaker("x", base_s=5.0, max_s=1.0)


def test_breakers_turn_work_away_while_any_destination_waits_for_its_probe() -> None:
    clock = FakeClock(T0)
    sf, it = make(clock, failures_to_open=1), make(clock, failures_to_open=1)
    gate = Breakers({"salesforce": sf, "iterable": it})
    assert gate.admit() == set()
    failed = Signals()
    failed.fail("iterable", "HTTP 503")
    failed.ok("salesforce")
    gate.report(failed, set())
    assert gate.admit() is None
    assert gate.outage().startswith("Iterable unreachable since ")
    assert gate.wait_s() == pytest.approx(1.0)
    clock.advance(1.0)
    assert gate.admit() == {"iterable"}
    assert gate.admit() is None  # the probe is out
    answered = Signals()
    answered.ok("iterable")
    answered.fail("iterable", "one batch timed out")  # an answer wins: Iterable is up
    gate.report(answered, {"iterable"})
    assert (gate.admit(), gate.outage(), gate.recoveries()) == (set(), "", 1)


def test_a_probe_that_sent_nothing_is_inconclusive() -> None:
    clock = FakeClock(T0)
    gate = Breakers({"iterable": make(clock, failures_to_open=1)})
    failed = Signals()
    failed.fail("iterable", "timeout")
    gate.report(failed, set())
    clock.advance(1.0)
    assert gate.admit() == {"iterable"}
    gate.report(Signals(), {"iterable"})
    assert gate.admit() == {"iterable"}
    assert gate.recoveries() == 0


@pytest.fixture
async def iterable(iterable_emulator: IterableEmulator) -> AsyncIterator[IterableClient]:
    async with make_session(5.0) as session:
        yield IterableClient(session, iterable_emulator.base_url, iterable_emulator.api_key)


def mapped(n: int) -> MappedUser:
    payload = {"email": f"b{n}@example.com", "dataFields": {"n": n}}
    return MappedUser("Contact", f"003000000000{n:03d}AAA", f"b{n}@example.com", None,
                      payload, payload_hash(payload))


async def test_the_writer_tells_the_breaker_and_fails_at_once_while_it_is_open(
        iterable: IterableClient, iterable_emulator: IterableEmulator) -> None:
    """Over real HTTP: spent retries open the breaker; then no call leaves the process (the
    in-flight work of the flushers ends at once); an answer to a probe closes it."""
    clock = FakeClock(T0)
    breaker = make(clock, failures_to_open=2)
    writer = IterableWriter(iterable, breaker=breaker,
                            policy=Policy(attempts=3, wait_initial_s=0.01))
    iterable_emulator.faults.fail_next("*", times=10**6, status=503)
    bulk = "POST /api/users/bulkUpdate"
    batches, _ = cut_batches([mapped(i) for i in range(4)], max_users=1)
    out = await writer.write(batches[:2])
    assert len(out.retry) == 2 and breaker.state == "open"
    assert iterable_emulator.state.count(bulk, 503) == 6
    out = await writer.write(batches[2:])
    assert len(out.retry) == 2 and out.requests == 0
    assert all(isinstance(err, CircuitOpen) for _, err in out.retry)
    assert "Iterable unreachable since" in str(out.retry[0][1])
    assert iterable_emulator.state.count(bulk, 503) == 6  # nothing was sent
    assert breaker.failures == 2  # a call not made is no failure

    iterable_emulator.faults.clear()
    clock.advance(breaker.wait_s())
    assert breaker.admit() == "probe"
    out = await writer.write(batches)
    assert len(out.synced) == 4 and breaker.state == "closed" and breaker.recoveries == 1


async def test_a_refusal_is_an_answer(iterable: IterableClient,
                                      iterable_emulator: IterableEmulator) -> None:
    clock = FakeClock(T0)
    breaker = make(clock, failures_to_open=1)
    breaker.failure("timeout")
    clock.advance(breaker.wait_s())
    assert breaker.admit() == "probe"
    writer = IterableWriter(iterable, breaker=breaker)
    bad = mapped(1)
    bad.payload["email"] = "not an email"
    out = await writer.update_single(bad)
    assert [reason for _, reason, _ in out.dead] == ["invalid_email"]
    assert breaker.state == "closed"


def test_a_retry_after_is_the_least_wait_before_the_probe() -> None:
    clock = FakeClock(T0)
    breaker = make(clock, failures_to_open=1, max_s=4.0)
    breaker.failure("iterable bulkUpdate: rate limited", retry_after_s=30.0)
    assert breaker.wait_s() == pytest.approx(30.0)
    clock.advance(30.0)
    assert breaker.admit() == "probe"
    breaker.failure("HTTP 503")
    assert breaker.wait_s() == pytest.approx(2.0)
