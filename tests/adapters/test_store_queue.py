"""Queue semantics of the store, on SQLite and on PostgreSQL: coalescing, versions, leases,
backoff, dead letters."""

from __future__ import annotations

import pytest

from streamsync.adapters.store import (
    LEASE_EXPIRED,
    RETRIES_EXHAUSTED,
    AckResult,
    Backoff,
    Failure,
    QueueInput,
    StoreAPI,
)
from tests.store_backends import StoreSpace, peek

T0 = 1_700_000_000.0


@pytest.fixture
async def store(any_store: StoreAPI) -> StoreAPI:
    return any_store


def lead(n: int, change: str = "UPDATE") -> QueueInput:
    return QueueInput("Lead", f"00Q{n:015d}", change)


async def test_coalescing_queues_a_record_once_and_bumps_its_version(store: StoreAPI) -> None:
    await store.record_event("/data/LeadChangeEvent", 1, [lead(1), lead(2)], 1000, T0)
    await store.record_event("/data/LeadChangeEvent", 2, [lead(1, "DELETE")], 900, T0 + 1)
    await store.enqueue([lead(1)], T0 + 2, "reconcile")

    stats = await store.queue_stats(T0 + 3)
    assert stats.depth == 2
    leases = await store.lease("f1", 10, 30, T0 + 3)
    by_id = {lease.record_id: lease for lease in leases}
    assert len(leases) == 2
    first = by_id[lead(1).record_id]
    assert first.version == 3
    assert first.change_type == "UPDATE"  # the latest change wins
    assert first.source == "reconcile"
    assert first.commit_ts_ms == 900  # the earliest commit covered
    assert first.first_enqueued_at == T0
    assert by_id[lead(2).record_id].version == 1


async def test_lease_is_oldest_first_bounded_and_filtered_by_object(store: StoreAPI) -> None:
    await store.enqueue([lead(3)], T0 + 3, "cdc")
    await store.enqueue([lead(1)], T0 + 1, "cdc")
    await store.enqueue([QueueInput("Contact", "003000000000000001")], T0, "fanout")
    await store.enqueue([lead(2)], T0 + 2, "cdc")

    assert await store.lease("f", 5, 30, T0 - 1) == []  # nothing due before it was enqueued
    two = await store.lease("f", 2, 30, T0 + 10, objects=["Lead"])
    assert [lease.record_id for lease in two] == [lead(1).record_id, lead(2).record_id]
    rest = await store.lease("f", 10, 30, T0 + 10)
    assert {lease.record_id for lease in rest} == {lead(3).record_id, "003000000000000001"}
    assert await store.lease("f", 10, 30, T0 + 10) == []  # all leased now
    assert await store.lease("f", 10, 30, T0 + 10, objects=[]) == []


async def test_leased_elsewhere_counts_live_leases_of_other_owners_on_one_object(
        store: StoreAPI) -> None:
    await store.enqueue([lead(1), lead(2), lead(3)], T0, "cdc")
    await store.enqueue([QueueInput("Contact", "003000000000000001")], T0, "cdc")
    await store.lease("w1", 1, 30, T0 + 1, objects=["Lead"])
    await store.lease("w2", 1, 30, T0 + 1, objects=["Lead"])
    await store.lease("w2", 1, 30, T0 + 1, objects=["Contact"])
    assert await store.leased_elsewhere("Lead", "w1", T0 + 2) == 1  # w2's; lead(3) not leased
    assert await store.leased_elsewhere("Lead", "w3", T0 + 2) == 2
    assert await store.leased_elsewhere("Contact", "w2", T0 + 2) == 0
    assert await store.leased_elsewhere("Lead", "w3", T0 + 31) == 0  # the leases expired
    [third] = await store.lease("w3", 1, 30, T0 + 3, objects=["Lead"])
    assert await store.leased_elsewhere("Lead", "w1", T0 + 4) == 2
    await store.ack([third])
    assert await store.leased_elsewhere("Lead", "w1", T0 + 4) == 1  # a settled row is free


async def test_change_while_leased_is_not_lost(store: StoreAPI) -> None:
    await store.record_event("/data/LeadChangeEvent", 1, [lead(1)], 1_000, T0)
    [lease] = await store.lease("f1", 10, 30, T0 + 1)

    # A newer change arrives while the flusher is writing the old state to Iterable.
    await store.record_event("/data/LeadChangeEvent", 2, [lead(1)], 5_000, T0 + 2)
    assert await store.lease("f1", 10, 30, T0 + 3) == []  # still leased: not handed out twice

    result = await store.ack([lease])
    assert (result.deleted, result.kept) == (0, 1)
    stats = await store.queue_stats(T0 + 4)
    assert (stats.depth, stats.leased, stats.due) == (1, 0, 1)

    [again] = await store.lease("f1", 10, 30, T0 + 4)
    assert again.version == lease.version + 1
    assert again.attempts == 0
    # Latency of the newer change is measured from its own commit and enqueue times.
    assert again.commit_ts_ms == 5_000
    assert again.first_enqueued_at == T0 + 2
    result = await store.ack([again])
    assert (result.deleted, result.kept) == (1, 0)
    assert (await store.queue_stats(T0 + 5)).depth == 0


async def test_ack_is_idempotent_and_ignores_unknown_rows(store: StoreAPI) -> None:
    await store.enqueue([lead(1)], T0, "cdc")
    leases = await store.lease("f", 10, 30, T0)
    assert (await store.ack(leases)).deleted == 1
    assert await store.ack(leases) == AckResult(0, 0)
    assert await store.ack([]) == AckResult(0, 0)


async def test_expired_lease_is_recovered_after_a_crash(store_space: StoreSpace) -> None:
    first = await store_space.open()
    await first.record_event("/data/LeadChangeEvent", 7, [lead(1), lead(2)], 1_000, T0)
    leased = await first.lease("dead-flusher", 10, 60, T0)
    assert len(leased) == 2
    await first.close()  # "crash": no ack, no release

    second = await store_space.open()
    try:
        assert await second.lease("new", 10, 60, T0 + 59) == []  # lease still live
        recovered = await second.lease("new", 10, 60, T0 + 60)
        assert {lease.record_id for lease in recovered} == {lead(1).record_id, lead(2).record_id}
        assert all(lease.attempts == 1 for lease in recovered)  # the lost attempt counts
        # The dead flusher's stale lease can no longer settle the rows it lost.
        assert (await second.release(leased)) == 0
        assert (await second.ack(recovered)).deleted == 2
        replay = await second.get_replay("/data/LeadChangeEvent")
        assert replay is not None and replay.replay_id == 7
    finally:
        await second.close()


async def test_a_record_that_crashes_its_flusher_ends_in_dead_letter(
        store_space: StoreSpace) -> None:
    store = await store_space.open()
    await store.enqueue([lead(1), lead(2)], T0, "cdc")
    now = T0
    for attempt in range(3):
        leases = await store.lease("f", 10, 30, now, max_attempts=3)
        poison = [lease for lease in leases if lease.record_id == lead(1).record_id]
        assert [lease.attempts for lease in poison] == [attempt]
        await store.ack([lease for lease in leases if lease not in poison])
        await store.enqueue([lead(2)], now, "cdc")  # healthy records keep flowing
        await store.close()  # the flusher dies on lead(1) every time
        store = await store_space.open()
        now += 30
    try:
        [healthy] = await store.lease("f", 10, 30, now, max_attempts=3)
        assert healthy.record_id == lead(2).record_id and healthy.attempts == 0
        [dead] = await store.dead_letters()
        assert (dead.record_id, dead.reason, dead.attempts) == (lead(1).record_id, LEASE_EXPIRED, 3)
        assert (await store.queue_stats(now)).depth == 1
    finally:
        await store.close()


async def test_release_returns_rows_without_penalty(store: StoreAPI) -> None:
    await store.enqueue([lead(1), lead(2)], T0, "cdc")
    leases = await store.lease("f", 10, 300, T0 + 1)
    assert await store.release(leases) == 2
    again = await store.lease("f", 10, 300, T0 + 2)
    assert [lease.attempts for lease in again] == [0, 0]
    assert [lease.record_id for lease in again] == [lease.record_id for lease in leases]


async def test_backoff_grows_with_full_jitter_and_ends_in_dead_letter(store: StoreAPI) -> None:
    draws = iter([1.0 - 1e-9, 0.0, 0.5, 0.999, 0.25] * 4)
    backoff = Backoff(base_s=2.0, max_delay_s=20.0, max_attempts=6, rand=lambda: next(draws))
    await store.record_event("/data/LeadChangeEvent", 1, [lead(1)], 1_000, T0)

    now = T0
    delays = []
    for attempt in range(1, 6):
        [lease] = await store.lease("f", 10, 30, now)
        assert lease.attempts == attempt - 1
        result = await store.retry_later([lease], "HTTP 503 from Iterable", now, backoff)
        assert result.retried == 1
        [(_, row_due)] = await _next_attempts(store)
        delay = row_due - now
        ceiling = min(20.0, 2.0 * 2 ** (attempt - 1))
        assert 0.0 <= delay <= ceiling
        delays.append(delay)
        assert await store.lease("f", 10, 30, now + delay - 0.001 if delay else now - 1) == []
        now = row_due
    # The jitter draws were (~1, 0, .5, .999, .25) of ceilings 2, 4, 8, 16, 20.
    assert delays == pytest.approx([2.0, 0.0, 4.0, 15.984, 5.0], abs=1e-6)

    [lease] = await store.lease("f", 10, 30, now)
    assert lease.attempts == 5
    result = await store.retry_later([lease], "HTTP 503 again", now, backoff)
    assert (result.retried, result.dead_lettered) == (0, 1)
    assert (await store.queue_stats(now)).depth == 0
    [dead] = await store.dead_letters()
    assert (dead.reason, dead.attempts, dead.last_error) == (RETRIES_EXHAUSTED, 6, "HTTP 503 again")
    assert await store.dead_letter_counts() == {RETRIES_EXHAUSTED: 1}


async def test_retry_after_is_a_floor_for_the_delay(store: StoreAPI) -> None:
    backoff = Backoff(base_s=1.0, max_delay_s=10.0, max_attempts=5, rand=lambda: 0.0)
    assert backoff.delay_s(3, retry_after_s=42.0) == 42.0
    assert backoff.delay_s(3) == 0.0
    assert Backoff(base_s=1.0, max_delay_s=10.0).ceiling_s(50) == 10.0
    await store.enqueue([lead(1)], T0, "cdc")
    leases = await store.lease("f", 10, 30, T0)
    await store.retry_later(leases, "429", T0, backoff, retry_after_s=7.5)
    assert await store.lease("f", 10, 30, T0 + 7.4) == []
    assert len(await store.lease("f", 10, 30, T0 + 7.5)) == 1


async def test_dead_letter_only_if_version_still_matches(store: StoreAPI) -> None:
    await store.enqueue([lead(1), lead(2)], T0, "cdc")
    leases = await store.lease("f", 10, 30, T0)
    # lead(2) is fixed in Salesforce while its bad version is in flight.
    await store.record_event("/data/LeadChangeEvent", 9, [lead(2)], 2_000, T0 + 1)

    result = await store.dead_letter(leases, "invalid_email", "email 'x@' rejected", T0 + 2)
    assert (result.dead_lettered, result.kept_newer, result.stale) == (1, 1, 0)
    [dead] = await store.dead_letters()
    assert dead.record_id == lead(1).record_id and dead.reason == "invalid_email"
    assert dead.attempts == 1
    [retry] = await store.lease("f", 10, 30, T0 + 2)
    assert retry.record_id == lead(2).record_id
    assert retry.attempts == 0 and retry.version == 2


async def test_dead_letter_each_keeps_per_record_reasons(store: StoreAPI) -> None:
    await store.enqueue([lead(1), lead(2), lead(3)], T0, "cdc")
    leases = await store.lease("f", 10, 30, T0)
    failures = [
        Failure(leases[0], "invalid_email", "bad email"),
        Failure(leases[1], "type_conflict", "field Age expects long"),
    ]
    result = await store.dead_letter_each(failures, T0 + 1)
    assert result.dead_lettered == 2
    assert (await store.ack(leases[2:])).deleted == 1
    assert await store.dead_letter_counts() == {"invalid_email": 1, "type_conflict": 1}
    assert (await store.queue_stats(T0 + 1)).depth == 0


async def test_stale_lease_cannot_settle_a_row_leased_again(store: StoreAPI) -> None:
    await store.enqueue([lead(1)], T0, "cdc")
    [old] = await store.lease("slow", 10, 5, T0)
    [new] = await store.lease("fast", 10, 5, T0 + 5)  # the slow flusher's lease expired
    backoff = Backoff(max_attempts=2, rand=lambda: 0.5)
    assert (await store.retry_later([old], "timeout", T0 + 6, backoff)).stale == 1
    assert (await store.dead_letter([old], "x", "y", T0 + 6)).stale == 1
    assert await store.dead_letters() == []
    assert await store.ack([old]) == AckResult(0, 0)
    assert (await store.ack([new])).deleted == 1


async def test_a_stale_lease_cannot_delete_a_new_incarnation_of_its_row(store: StoreAPI) -> None:
    await store.enqueue([lead(1)], T0, "cdc")
    [old] = await store.lease("slow", 10, 5, T0)
    [new] = await store.lease("fast", 10, 5, T0 + 5)
    assert (await store.ack([new])).deleted == 1
    await store.enqueue([lead(1)], T0 + 6, "cdc")  # a new row, version 1 like `old`
    assert await store.ack([old]) == AckResult(0, 0)
    assert await store.release([old]) == 0
    [fresh] = await store.lease("fast", 10, 5, T0 + 6)
    assert (fresh.record_id, fresh.version, fresh.attempts) == (lead(1).record_id, 1, 0)


async def test_queue_stats_counts_due_leased_and_backoff(store: StoreAPI) -> None:
    assert (await store.queue_stats(T0)).oldest_age_s is None
    await store.enqueue([lead(n) for n in range(5)], T0, "cdc")
    leases = await store.lease("f", 2, 30, T0 + 10)
    backoff = Backoff(base_s=100.0, max_delay_s=100.0, rand=lambda: 0.5)
    await store.retry_later(leases[:1], "503", T0 + 10, backoff)
    stats = await store.queue_stats(T0 + 20)
    assert (stats.depth, stats.due, stats.leased, stats.retrying) == (5, 3, 1, 1)
    assert stats.oldest_age_s == pytest.approx(20.0)
    assert await store.queue_depth_by_object() == {"Lead": 5}


async def test_inputs_are_validated_before_any_write(store: StoreAPI) -> None:
    with pytest.raises(ValueError, match="source"):
        await store.enqueue([lead(1)], T0, "bogus")
    with pytest.raises(ValueError, match="record_id"):
        QueueInput("Lead", "")
    with pytest.raises(ValueError, match="replay id"):
        await store.record_event("/data/X", 1.5, [lead(1)], None, T0)  # type: ignore[arg-type]
    assert (await store.queue_stats(T0)).depth == 0
    assert await store.enqueue([], T0, "cdc") == 0


async def _next_attempts(store: StoreAPI) -> list[tuple[str, float]]:
    # White-box peek at the due time; the public API shows it only through `lease`.
    rows = await peek(store, "SELECT record_id, next_attempt_at FROM queue")
    return [(str(row[0]), float(row[1])) for row in rows]  # type: ignore[arg-type]


async def test_waiting_out_an_outage_never_costs_an_attempt(store: StoreAPI) -> None:
    backoff = Backoff(base_s=1.0, max_delay_s=8.0, max_attempts=2, rand=lambda: 1.0 - 1e-9)
    await store.enqueue([lead(1), lead(2)], T0, "cdc")
    now = T0
    for outage in range(1, 30):  # far past max_attempts
        leases = await store.lease("f", 10, 30, now)
        assert [(x.attempts, x.outage_retries) for x in leases] == [(0, outage - 1)] * 2
        result = await store.wait_out(leases, "iterable bulkUpdate: HTTP 503", now, backoff)
        assert (result.retried, result.dead_lettered) == (2, 0)
        due = [row_due for _, row_due in await _next_attempts(store)]
        assert due == pytest.approx([now + min(8.0, 2.0 ** (outage - 1))] * 2)
        now = max(due)
    assert await store.dead_letters() == []
    stats = await store.queue_stats(now - 0.5)
    assert (stats.depth, stats.retrying) == (2, 2)


async def test_an_outage_retry_is_due_at_the_probe_and_at_once_when_the_outage_ends(
        store: StoreAPI) -> None:
    backoff = Backoff(base_s=1.0, max_delay_s=300.0, max_attempts=5)
    await store.enqueue([lead(1), lead(2), lead(3)], T0, "cdc")
    leases = await store.lease("f", 10, 30, T0)
    await store.wait_out(leases[:1], "timeout", T0, backoff, until=T0 + 5.0)
    await store.wait_out(leases[1:2], "429", T0, backoff, retry_after_s=9.0, until=T0 + 5.0)
    await store.retry_later(leases[2:], "a bug", T0, Backoff(base_s=60.0, max_delay_s=60.0,
                                                             rand=lambda: 1.0 - 1e-9))
    assert sorted(due for _, due in await _next_attempts(store)) == pytest.approx(
        [T0 + 5.0, T0 + 9.0, T0 + 60.0])
    [again] = await store.lease("f", 10, 30, T0 + 5.0)
    assert (again.record_id, again.attempts, again.outage_retries) == (lead(1).record_id, 0, 1)
    await store.release([again])

    assert await store.resume_waiting(T0 + 6.0) == 2  # the bug's retry keeps its backoff
    due = await store.lease("f", 10, 30, T0 + 6.0)
    assert sorted(x.record_id for x in due) == [lead(1).record_id, lead(2).record_id]
    assert {(x.attempts, x.outage_retries) for x in due} == {(0, 0)}
    await store.ack(due)
    assert await store.lease("f", 10, 30, T0 + 59.0) == []


async def test_a_newer_change_acked_after_an_outage_starts_its_outage_count_over(
        store: StoreAPI) -> None:
    backoff = Backoff(base_s=1.0, max_delay_s=1.0)
    await store.enqueue([lead(1)], T0, "cdc")
    [first] = await store.lease("f", 10, 30, T0)
    await store.wait_out([first], "503", T0, backoff, until=T0)
    [second] = await store.lease("f", 10, 30, T0 + 1)
    await store.enqueue([lead(1)], T0 + 2, "cdc")  # changed while leased
    assert (await store.ack([second])).kept == 1
    [third] = await store.lease("f", 10, 30, T0 + 3)
    assert (third.attempts, third.outage_retries) == (0, 0)
