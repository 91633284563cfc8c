"""The re-sync's write window (runtime/resync_window.py): chunks of several pages written at
once, at most `width`, and a page handed back for its checkpoint only once it and every page
before it are written."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from streamsync.runtime.resync_window import DonePage, WriteWindow


def gated(gate: asyncio.Event, written: int) -> Callable[[], Awaitable[int]]:
    async def write() -> int:
        await gate.wait()
        return written

    return write


async def test_a_page_comes_back_only_once_it_and_the_pages_before_it_are_written() -> None:
    window = WriteWindow(3)
    a1, a2, b1 = asyncio.Event(), asyncio.Event(), asyncio.Event()
    await window.add("a", 2000, [gated(a1, 1000), gated(a2, 990)])
    await window.add("b", 1000, [gated(b1, 7)])
    b1.set()  # the later page is written first
    await asyncio.sleep(0)
    assert window.done() == []
    a1.set()
    await asyncio.sleep(0)
    assert window.done() == []
    a2.set()
    await asyncio.sleep(0)
    assert window.done() == [DonePage("a", 2000, 1990), DonePage("b", 1000, 7)]
    assert window.done() == []
    await window.close()


async def test_at_most_width_chunks_run_at_once_and_drain_returns_every_page() -> None:
    window = WriteWindow(2)
    running = peak = 0

    def chunk() -> Callable[[], Awaitable[int]]:
        async def write() -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            return 1

        return write

    for page in ("a", "b", "c"):
        await window.add(page, 2, [chunk(), chunk()])
    pages = [*window.done(), *await window.drain()]
    await window.close()
    assert peak == 2
    assert [p.last_id for p in pages] == ["a", "b", "c"]
    assert [p.written for p in pages] == [2, 2, 2]


async def test_a_failed_chunk_is_raised_and_close_lets_the_others_finish() -> None:
    window = WriteWindow(3)
    slow_done = asyncio.Event()

    async def slow() -> int:
        await asyncio.sleep(0.05)
        slow_done.set()
        return 1

    async def broken() -> int:
        raise RuntimeError("store gone")

    try:
        await window.add("a", 2, [slow, broken])
        with pytest.raises(RuntimeError, match="store gone"):
            await window.drain()
    finally:
        await window.close()
    assert slow_done.is_set()  # a written chunk is never cut off by another's failure


async def test_close_cancels_the_chunks_when_it_is_cancelled_itself() -> None:
    window = WriteWindow(2)
    cancelled = asyncio.Event()

    async def forever() -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    await window.add("a", 1, [forever])
    closing = asyncio.create_task(window.close())
    await asyncio.sleep(0.01)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert cancelled.is_set()


def test_width_must_be_positive() -> None:
    with pytest.raises(ValueError):
        WriteWindow(0)
