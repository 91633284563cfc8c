"""runtime/generations.py: waiting for the calls that began before a reload (the pipeline's
writes mapped with the old mapping) and for no others."""

from __future__ import annotations

import asyncio

from streamsync.runtime.generations import FORGOTTEN_KEEP_S, ForgottenRecords, Generations


async def test_settled_waits_for_older_calls_only() -> None:
    gens = Generations()
    release_old, release_new = asyncio.Event(), asyncio.Event()

    async def call(release: asyncio.Event) -> None:
        with gens.call():
            await release.wait()

    old = asyncio.create_task(call(release_old))
    await asyncio.sleep(0)
    gens.bump()
    new = asyncio.create_task(call(release_new))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(gens.settled())
    await asyncio.sleep(0.01)
    assert not waiter.done() and gens.older_running() == 1
    release_old.set()
    await asyncio.wait_for(waiter, 1.0)  # the newer call is still running
    assert not new.done()
    release_new.set()
    await asyncio.gather(old, new)
    assert gens.older_running() == 0


async def test_settled_returns_at_once_with_nothing_older() -> None:
    gens = Generations()
    with gens.call():
        gens.bump()
        assert gens.older_running() == 1
    await asyncio.wait_for(gens.settled(), 1.0)


async def test_the_record_gate_holds_a_record_in_one_call_at_a_time() -> None:
    from streamsync.runtime.generations import RecordGate

    gate, order = RecordGate(), []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with gate.hold("Lead", ["a", "b"]):
            first_in.set()
            await release.wait()
            order.append("first")

    async def overlapping() -> None:
        async with gate.hold("Lead", ["b", "c"]):
            order.append("overlapping")

    async def disjoint() -> None:
        async with gate.hold("Lead", ["d"]):
            order.append("disjoint")

    one = asyncio.create_task(first())
    await first_in.wait()
    two, three = asyncio.create_task(overlapping()), asyncio.create_task(disjoint())
    await asyncio.wait_for(three, 1.0)  # not held up by the other records
    assert order == ["disjoint"] and not two.done()
    release.set()
    await asyncio.gather(one, two)
    assert order == ["disjoint", "first", "overlapping"]


async def test_hold_free_takes_only_the_records_nobody_holds_and_never_waits() -> None:
    from streamsync.runtime.generations import RecordGate

    gate = RecordGate()

    async def then_b() -> None:
        async with gate.hold("Lead", ["b"]):
            pass

    async with gate.hold("Lead", ["a"]):
        async with gate.hold_free("Lead", ["a", "b"]) as free:
            assert free == {"b"}
            waiting = asyncio.create_task(then_b())
            await asyncio.sleep(0.01)
            assert not waiting.done()  # "b" is held until hold_free ends
        await asyncio.wait_for(waiting, 1.0)


def test_forgotten_records_are_those_forgotten_after_a_read() -> None:
    forgotten = ForgottenRecords()
    forgotten.note("Lead", ["a", "b"], 100.0)
    assert forgotten.since("Lead", ["a", "b", "c"], 99.0) == {"a", "b"}
    assert forgotten.since("Lead", ["a"], 100.0) == set()  # read after it was forgotten
    assert forgotten.since("Contact", ["a"], 99.0) == set()
    assert forgotten.since("Lead", ["a"], None) == set()  # not a re-sync page


def test_forgotten_records_stay_bounded() -> None:
    forgotten = ForgottenRecords()
    forgotten.note("Lead", ["old"], 0.0)
    for n in range(3000):
        forgotten.note("Lead", [f"r{n}"], FORGOTTEN_KEEP_S + 1.0 + n)
    assert forgotten.since("Lead", ["old"], -1.0) == set()  # dropped: no page waits that long
    assert forgotten.since("Lead", ["r2999"], FORGOTTEN_KEEP_S) == {"r2999"}
