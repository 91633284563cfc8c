"""One window of a backfill: a reader task fetching pages ahead, the write engine sending
whole batches, and keyset checkpoints saved in Id order after each confirmed call."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from streamsync.adapters.store import BackfillWindow, Checkpoint, StoreAPI
from streamsync.logs import get_logger
from streamsync.runtime.backfill.plan import ObjectPlan
from streamsync.runtime.backfill.read import Page, PageReader, strip_attributes
from streamsync.runtime.backfill.write import Grouper, WriteEngine, sendable_check
from streamsync.runtime.progress import Progress

log = get_logger(__name__)

PageHook = Callable[[BackfillWindow, int], Awaitable[None]]
"""Called after each page of a window is written and checkpointed (window, pages so far)."""
ReadHook = Callable[[str, Page], None]
"""Called with each page as it is read (object name, page)."""


class Checkpoints(Protocol):
    """Where a window's progress goes (runtime/backfill/joint.py `Participation`: fenced by
    the window's lease)."""

    async def save(self, window: BackfillWindow, last_id: str | None,
                   records_done: int) -> None: ...

    async def finish(self, window: BackfillWindow, records_done: int) -> None: ...


@dataclass(frozen=True, slots=True)
class WindowSettings:
    """How a window is run: pages read ahead, calls in flight, users per call."""

    prefetch_pages: int
    write_depth: int
    group_users: int


class WindowRunner:
    """Runs windows: per window, `prefetch_pages` pages at most wait for the writer, which has
    up to `write_depth` calls in flight (so a request always waits at the rate limiter) and
    carries over less than one call's worth. A killed run resumes from the last checkpoint and
    re-sends at most the calls that were in flight."""

    def __init__(self, *, store: StoreAPI, reader: PageReader, writer: WriteEngine,
                 settings: WindowSettings, progress: Progress, on_read: ReadHook,
                 on_page: PageHook | None = None, clock: Callable[[], float] = time.time,
                 checkpoints: Checkpoints | None = None) -> None:
        self.store = store
        self.reader = reader
        self.writer = writer
        self.settings = settings
        self.progress = progress
        self.on_read = on_read
        self.on_page = on_page
        self.clock = clock
        self.checkpoints = checkpoints

    async def _save(self, run_id: str, window: BackfillWindow, last_id: str,
                    done: int) -> None:
        if self.checkpoints is not None:
            await self.checkpoints.save(window, last_id, done)
        else:
            await self.store.save_checkpoint(run_id, window, last_id, done, self.clock())

    async def _finish(self, run_id: str, window: BackfillWindow, done: int) -> None:
        if self.checkpoints is not None:
            await self.checkpoints.finish(window, done)
        else:
            await self.store.finish_window(run_id, window, self.clock(), done)

    async def run(self, run_id: str | None, cp: Checkpoint, plan: ObjectPlan) -> None:
        """Read and write the rest of `cp`'s window; `run_id` None (dry run) saves nothing."""
        window = cp.window
        pages: asyncio.Queue[Page | BaseException | None] = asyncio.Queue()
        room = asyncio.Semaphore(self.settings.prefetch_pages)
        reader = asyncio.create_task(self._read(plan, window, cp.last_id, pages, room))
        done = cp.records_done
        page_no = 0
        mapping = self.writer.mappings[plan.object_name]
        grouper = Grouper(self.settings.group_users,
                          sendable_check(self.writer.config, mapping, plan.object_name))
        # calls in flight, oldest first: (task, last Id, records); checkpoints follow this order
        inflight: collections.deque[tuple[asyncio.Task[None], str, int]] = collections.deque()
        ended = False
        log.info("backfill.window_started", run_id=run_id, object=plan.object_name,
                 start=window.window_start, end=window.window_end, after_id=cp.last_id)

        async def settle_oldest() -> None:
            nonlocal done, page_no
            task, last_id, count = inflight[0]
            await task
            inflight.popleft()
            done += count
            page_no += 1
            if run_id is not None:
                await self._save(run_id, window, last_id, done)
            self.progress.advance(count)
            if self.on_page is not None:
                await self.on_page(window, page_no)

        try:
            while not ended:
                item = await pages.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    ended = True
                else:
                    grouper.add(item.records)
                    del item
                    room.release()
                while (group := grouper.take(final=ended)) is not None:
                    task = asyncio.create_task(self.writer.write(plan.object_name, group))
                    inflight.append((task, group[-1]["Id"], len(group)))
                    del group
                    while len(inflight) >= self.settings.write_depth:
                        await settle_oldest()
            while inflight:
                await settle_oldest()
            if run_id is not None:
                await self._finish(run_id, window, done)
        finally:
            await _cancel(reader, [task for task, _last, _count in inflight])
        log.info("backfill.window_finished", run_id=run_id, object=plan.object_name,
                 start=window.window_start, end=window.window_end, records=done)

    async def _read(self, plan: ObjectPlan, window: BackfillWindow, after: str | None,
                    out: asyncio.Queue[Page | BaseException | None],
                    room: asyncio.Semaphore) -> None:
        """Put the window's pages into `out`, then None (or the error that stopped it).

        A page is only fetched once `room` has a place (the writer frees one per page written),
        so at most `prefetch_pages` pages wait for the writer.
        """
        pages = self.reader.pages(plan, window, after)
        try:
            while True:
                await room.acquire()
                try:
                    page = await anext(pages)
                except StopAsyncIteration:
                    break
                strip_attributes(page.records)
                self.writer.totals.read += len(page.records)
                self.on_read(plan.object_name, page)
                out.put_nowait(page)
                del page
            out.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the writer, which raises it in the run
            out.put_nowait(exc)
        finally:
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                await aclose()


async def _cancel(reader: asyncio.Task[None], writes: list[asyncio.Task[None]]) -> None:
    """Stop a window's reader and calls in flight, waiting for each to end."""
    for task in writes:
        task.cancel()
    for task in writes:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if not reader.done():
        reader.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await reader
