"""Subscribes to the CDC channels this worker leads, and only to those (docs/design.md §1.8).

One `Ingest` (one CometD session) covers the channels led now; when that set changes (a lease
acquired, lost or taken over) the ingest is stopped (the message in hand is stored first, or
refused by the store's fence) and a new one starts for the new set, resuming every channel from
its stored replay id. A write the store fences off (`LeadershipLost`) ends the subscription of
that channel and the worker goes back to following; the flushers run on regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from streamsync.errors import LeadershipLost
from streamsync.logs import get_logger
from streamsync.runtime.ingest import Ingest
from streamsync.runtime.leadership import Leadership

log = get_logger(__name__)

BuildIngest = Callable[[list[str]], Ingest]


class Subscriptions:
    """Runs an `Ingest` for the led channels; `current` is it (None while following)."""

    def __init__(self, leadership: Leadership, build: BuildIngest) -> None:
        self._leadership = leadership
        self._build = build
        self.current: Ingest | None = None
        self.deposed = 0

    @property
    def following(self) -> bool:
        """True while this worker leads no channel (another worker subscribes)."""
        return not self._leadership.channels()

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: follow, or run an ingest for the led channels. Returns early only
        when an ingest ends by itself (its subscriber gave up), which ends the service."""
        changed = self._leadership.changed
        while not stop.is_set():
            changed.clear()
            channels = self._leadership.channels()
            if not channels:
                await _first_of(stop.wait(), changed.wait())
                continue
            if not await self._lead(channels, stop):
                return

    async def _lead(self, channels: list[str], stop: asyncio.Event) -> bool:
        """Run one ingest until stop or a change of the led set; False when it ended alone."""
        changed = self._leadership.changed
        ingest = self._build(channels)
        self.current = ingest
        halt = asyncio.Event()
        task = asyncio.create_task(ingest.run(halt), name="ingest.leader")
        log.info("workers.subscribing", channels=",".join(channels),
                 worker=self._leadership.worker_id)
        try:
            while not task.done():
                await _first_of(task, stop.wait(), changed.wait())
                if stop.is_set():
                    break
                if changed.is_set():
                    changed.clear()
                    if self._leadership.channels() != channels:
                        break
            ended_alone = task.done() and not stop.is_set()
            halt.set()
            try:
                await task
            except LeadershipLost as exc:
                self.deposed += 1
                self._leadership.lost(exc.channel, exc.token)
                log.warning("workers.deposed", channel=exc.channel,
                            worker=self._leadership.worker_id, error=str(exc),
                            detail="another worker leads the channel now; following")
                return True
            return not ended_alone
        finally:
            self.current = None
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


async def _first_of(*aws: Awaitable[object]) -> None:
    """Wait until the first of the awaitables (or tasks) is done; cancel the others we made."""
    made: list[asyncio.Future[object]] = []
    waits: list[asyncio.Future[object]] = []
    for item in aws:
        if isinstance(item, asyncio.Future):
            waits.append(item)
        else:
            made.append(asyncio.ensure_future(item))
            waits.append(made[-1])
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in made:
            pending.cancel()
        await asyncio.gather(*made, return_exceptions=True)
