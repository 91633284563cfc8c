"""The re-sync's write window (runtime/resync.py): a page's records are written in chunks, a
few chunks at a time across pages, so Iterable always has the next request of the re-sync ready
while the previous one is answered; a page is handed back for its checkpoint only once every
chunk of it and of every page before it is done (a checkpoint never passes a record Iterable
has not taken)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DonePage:
    """A page whose every chunk is written: its last Id, records read, records written."""

    last_id: str
    read: int
    written: int


@dataclass(slots=True)
class _Page:
    last_id: str
    read: int
    chunks: list[asyncio.Task[int]]
    started: bool = False
    """Every chunk of the page has been started."""


class WriteWindow:
    """Runs chunk writes (coroutines returning the records written), at most `width` at once.

    `add` starts a page's chunks, waiting for room; `done` pops the finished pages in read
    order; `drain` waits for every chunk; `close` (always, in a `finally`) waits for the
    chunks still running, or cancels them when the caller itself is cancelled. A failed chunk
    raises its error from the next `add`, `done` or `drain`.
    """

    def __init__(self, width: int) -> None:
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        self._room = asyncio.Semaphore(width)
        self._pages: deque[_Page] = deque()

    async def add(self, last_id: str, read: int,
                  chunks: Sequence[Callable[[], Awaitable[int]]]) -> None:
        """Start the chunk writes of one page, each once there is room."""
        page = _Page(last_id, read, [])
        self._pages.append(page)
        for write in chunks:
            await self._room.acquire()
            self._raise_failed()
            page.chunks.append(asyncio.ensure_future(self._run(write)))
        page.started = True

    async def _run(self, write: Callable[[], Awaitable[int]]) -> int:
        try:
            return await write()
        finally:
            self._room.release()

    def done(self) -> list[DonePage]:
        """The pages written since the last call, in read order."""
        self._raise_failed()
        out: list[DonePage] = []
        while self._pages and self._pages[0].started and all(
                t.done() for t in self._pages[0].chunks):
            page = self._pages.popleft()
            out.append(DonePage(page.last_id, page.read, sum(t.result() for t in page.chunks)))
        return out

    async def drain(self) -> list[DonePage]:
        """Wait for every chunk started; the pages not handed back yet."""
        running = self._running()
        while running:
            await asyncio.wait(running, return_when=asyncio.FIRST_EXCEPTION)
            self._raise_failed()
            running = self._running()
        return self.done()

    async def close(self) -> None:
        """Let the chunks still running finish (their errors are the caller's to have seen);
        cancel them if this wait is itself cancelled."""
        running = self._running()
        if not running:
            return
        try:
            await asyncio.wait(running)
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*running, return_exceptions=True)
            raise
        finally:
            for task in running:  # retrieved, so none is logged as never retrieved
                if task.done() and not task.cancelled():
                    task.exception()

    def _running(self) -> list[asyncio.Task[int]]:
        return [t for page in self._pages for t in page.chunks if not t.done()]

    def _raise_failed(self) -> None:
        for page in self._pages:
            for task in page.chunks:
                error = task.exception() if task.done() and not task.cancelled() else None
                if error is not None:
                    raise error
