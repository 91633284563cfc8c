"""Wake-ups on the real-time path: an enqueue wakes the flusher at once (no linger poll), a row
retried later is leased at its due time without a wake, and small flushes coalesce.

`flush.linger_ms` is 10 s and the flusher's recheck for other processes is 60 s in these tests,
so a record that reaches Iterable within the guard got there by a wake-up or a due time, not
by a poll. The guards are generous (a missed wake costs 10 s or more)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from streamsync.adapters.store import Backoff, QueueInput
from streamsync.core.ids import to_18
from streamsync.emulators.iterable import IterableEmulator
from streamsync.emulators.salesforce import SalesforceEmulator
from streamsync.runtime import flush_loop as flush_loop_module
from streamsync.runtime.app import Service
from streamsync.runtime.flusher import Flusher
from streamsync.runtime.wakeup import Coalescer, QueueSignal
from tests.conftest import MakeConfig, SyncRig

GUARD_S = 8.0
"""Well below the 10 s linger and the 60 s recheck: reaching Iterable within it needs a wake."""
SLOW = {"flush": {"linger_ms": 10_000}}


@pytest.fixture(autouse=True)
def no_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle flusher would otherwise look at the queue every second anyway."""
    monkeypatch.setattr(flush_loop_module, "OTHER_PROCESS_RECHECK_S", 60.0)


async def _until(predicate: Callable[[], bool], timeout_s: float = GUARD_S) -> float:
    """Wait until `predicate()`; the epoch time it first held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not reached within {timeout_s} s")


def _first_name(it: IterableEmulator, email: str) -> Any:
    it.flush()
    profile = it.state.snapshot().get(email)
    return None if profile is None else profile["dataFields"].get("firstName")


def _contact(rig: SyncRig, name: str, first: str) -> str:
    return to_18(rig.sf.state.create("Contact", {"LastName": name, "FirstName": first,
                                                 "Email": f"{name}@example.com"}))


@pytest.fixture
async def running(sync_rig: SyncRig) -> AsyncIterator[tuple[SyncRig, Flusher, QueueSignal]]:
    """The rig's parts under `Flusher.run` with a real clock and a signal of its own."""
    rig = sync_rig
    signal = QueueSignal()
    flusher = Flusher(config=rig.config, store=rig.store, salesforce=rig.clients.salesforce,
                      pipeline=rig.pipeline, metrics=rig.metrics, owner="wake", clock=time.time,
                      signal=signal)
    stop = asyncio.Event()
    task = asyncio.create_task(flusher.run(stop))
    # Every loop has found the queue empty and sleeps (0.1 s was too short for a loop's first
    # look under a loaded CI machine: it then found the row itself, no wake needed).
    await asyncio.sleep(0.5)
    try:
        yield rig, flusher, signal
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def _enqueue(rig: SyncRig, ids: list[str], signal: QueueSignal | None) -> None:
    await rig.store.enqueue([QueueInput("Contact", i) for i in ids], time.time(), "cdc")
    if signal is not None:
        signal.notify()


@pytest.mark.sync_config(**SLOW)
async def test_an_enqueue_wakes_the_idle_flusher_without_waiting_for_linger(
        running: tuple[SyncRig, Flusher, QueueSignal]) -> None:
    rig, _flusher, signal = running
    sf_id = _contact(rig, "woken", "First")
    await _enqueue(rig, [sf_id], signal)
    await _until(lambda: _first_name(rig.it, "woken@example.com") == "First")
    rig.sf.state.update("Contact", sf_id, {"FirstName": "Second"})  # and again, once idle
    await _enqueue(rig, [sf_id], signal)
    await _until(lambda: _first_name(rig.it, "woken@example.com") == "Second")
    for _ in range(500):  # Iterable has it; the ack follows the write
        if (await rig.store.queue_stats(time.time())).depth == 0:
            break
        await asyncio.sleep(0.01)
    assert (await rig.store.queue_stats(time.time())).depth == 0


@pytest.mark.sync_config(**SLOW)
async def test_without_a_wake_the_row_waits(
        running: tuple[SyncRig, Flusher, QueueSignal]) -> None:
    """The other side of the test above: the signal is what moved it (no poll does)."""
    rig, _flusher, _signal = running
    sf_id = _contact(rig, "unwoken", "Quiet")
    await _enqueue(rig, [sf_id], None)
    await asyncio.sleep(1.5)  # longer than the old 1 s recheck and any lease round trip
    assert _first_name(rig.it, "unwoken@example.com") is None
    assert (await rig.store.queue_stats(time.time())).due == 1


@pytest.mark.sync_config(**SLOW)
async def test_a_retried_row_is_leased_at_its_due_time_without_a_wake(
        sync_rig: SyncRig) -> None:
    rig = sync_rig
    sf_id = _contact(rig, "retried", "Later")
    await _enqueue(rig, [sf_id], None)
    now = time.time()
    leases = await rig.store.lease("earlier", 10, 60.0, now, objects=["Contact"])
    assert len(leases) == 1
    await rig.store.retry_later(leases, "boom", now,
                                Backoff(base_s=0.5, max_delay_s=0.5, max_attempts=5), 1.0)
    due = await rig.store.next_due(["Contact"])
    assert due is not None and due >= now + 1.0
    assert await rig.store.next_due(["Lead"]) is None  # only the flusher's objects count

    signal = QueueSignal()
    flusher = Flusher(config=rig.config, store=rig.store, salesforce=rig.clients.salesforce,
                      pipeline=rig.pipeline, metrics=rig.metrics, owner="wake", clock=time.time,
                      signal=signal)
    stop = asyncio.Event()
    task = asyncio.create_task(flusher.run(stop))
    try:
        synced_at = await _until(lambda: _first_name(rig.it, "retried@example.com") == "Later")
        assert signal.generation == 0  # nothing woke it: the due time did
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert synced_at >= due
    assert await rig.store.next_due(["Contact"]) is None


@pytest.mark.sync_config(**SLOW)
async def test_a_change_during_the_flush_is_synced_right_after_it(
        running: tuple[SyncRig, Flusher, QueueSignal]) -> None:
    """The row stays leased while the newer change arrives; its ack makes it due and wakes."""
    rig, flusher, signal = running
    sf_id = _contact(rig, "moving", "Before")
    real: Callable[..., Awaitable[Any]] = rig.pipeline.sync_records
    calls = 0

    async def change_mid_flight(object_name: str, records: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            rig.sf.state.update("Contact", sf_id, {"FirstName": "After"})
            await _enqueue(rig, [sf_id], signal)  # as ingest would: the row is leased now
        return await real(object_name, records, **kw)

    rig.pipeline.sync_records = change_mid_flight  # type: ignore[method-assign]
    await _enqueue(rig, [sf_id], signal)
    await _until(lambda: _first_name(rig.it, "moving@example.com") == "After")
    assert calls == 2


async def test_service_flushes_a_cdc_change_without_waiting_for_linger(
        sf_emulator: SalesforceEmulator, iterable_emulator: IterableEmulator, tmp_path: Path,
        make_config: MakeConfig) -> None:
    """The production composition root: ingest's commit wakes the flusher."""
    config = make_config(sf_emulator, iterable_emulator, tmp_path, **SLOW)
    service = Service(config, metrics_refresh_s=0.1, shutdown_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await _until(lambda: service.readiness().ready, 30.0)
        contact_id = sf_emulator.select_ids("Contact", "Email != null", limit=1)[0]
        record = sf_emulator.state.record("Contact", contact_id)
        assert record is not None
        await asyncio.sleep(0.5)  # the start-up flushes are over; every loop sleeps
        sf_emulator.state.update("Contact", contact_id, {"FirstName": "Awake"})
        await _until(lambda: _first_name(iterable_emulator, record["Email"].lower()) == "Awake")
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


async def test_signal_seen_before_looking_is_never_missed() -> None:
    signal = QueueSignal()
    seen = signal.generation
    signal.notify()  # between reading the queue and starting to wait
    assert await signal.wait(seen, 10.0)
    assert not await signal.wait(signal.generation, 0.01)


async def test_a_small_flush_in_flight_holds_the_next_until_it_returns() -> None:
    coalescer = Coalescer(linger_s=10.0)
    stop = asyncio.Event()
    first = await coalescer.turn(stop)
    coalescer.leased(first, 3, full=False)
    second = asyncio.create_task(coalescer.turn(stop))
    await asyncio.sleep(0.05)
    assert not second.done()  # 3 rows in flight: the next small flush waits for them
    coalescer.done(first)
    turn = await asyncio.wait_for(second, 5)
    coalescer.leased(turn, 0, full=False)
    coalescer.done(turn)
    assert (await asyncio.wait_for(coalescer.turn(stop), 5)).leasing  # nothing in flight


async def test_a_small_flush_holds_the_next_at_most_linger() -> None:
    coalescer = Coalescer(linger_s=0.05)
    stop = asyncio.Event()
    first = await coalescer.turn(stop)
    coalescer.leased(first, 3, full=False)
    started = time.monotonic()
    await asyncio.wait_for(coalescer.turn(stop), 5)  # `first` never returns
    assert time.monotonic() - started >= 0.04


async def test_one_lease_at_a_time_and_a_full_batch_lets_everyone_go() -> None:
    coalescer = Coalescer(linger_s=10.0)
    stop = asyncio.Event()
    small = await coalescer.turn(stop)
    coalescer.leased(small, 5, full=False)
    leasing = coalescer.under_load()
    waiting = [asyncio.create_task(coalescer.turn(stop)) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting)
    coalescer.leased(leasing, 2000, full=True)  # a backlog
    done, pending = await asyncio.wait(waiting, timeout=0.5)
    assert len(done) == 1 and len(pending) == 1  # one lease at a time still
    coalescer.leased(next(iter(done)).result(), 2000, full=True)
    await asyncio.wait_for(pending.pop(), 5)
    stop.set()
