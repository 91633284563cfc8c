"""With several workers, an object being re-synced is written by one worker only: the one that
leads its CDC channel, where its re-sync runs (docs/design.md §9, "One writer per record at a
time"). Within a process the pipeline's `RecordGate` (runtime/generations.py) keeps a
re-sync page and a real-time flush of one record apart, and a page read before a real-time write
skips the record; across processes neither can see the other's calls, so a page read before a
change could land in Iterable after another worker's flush wrote that change.

So the other workers' flushers leave the object's queue rows alone while its re-sync is owed
(`ResyncHolds.held_elsewhere`, a view of the store's `resync` rows at most `VIEW_S` old), and the
re-sync starts writing only once no other worker holds a lease on one of its rows
(`wait_for_other_writers`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from streamsync.adapters.store import StoreAPI
from streamsync.config import Config
from streamsync.logs import get_logger

log = get_logger(__name__)

VIEW_S = 1.0
"""How old a flusher's view of the re-syncs under way may be."""
POLL_S = 0.2


class Leader(Protocol):
    """Which CDC channels this worker leads, and its id (runtime/leadership.py `Leadership`)."""

    worker_id: str

    def channels(self) -> list[str]: ...


class ResyncHolds:
    """The objects another worker is re-syncing: their rows are that worker's to flush."""

    def __init__(self, store: StoreAPI, leads: Leader, config: Callable[[], Config],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._leads = leads
        self._config = config
        self._clock = clock
        self._owed: frozenset[str] = frozenset()
        self._read_at: float | None = None

    async def held_elsewhere(self) -> frozenset[str]:
        """Objects with a re-sync under way whose channel this worker does not lead."""
        now = self._clock()
        if self._read_at is None or now - self._read_at >= VIEW_S:
            self._owed = frozenset(await self._store.resyncs())
            self._read_at = now
        led = set(self._leads.channels())
        config = self._config()
        return frozenset(name for name in self._owed
                         if name in config.objects and config.channel(name) not in led)


async def wait_for_other_writers(store: StoreAPI, object_name: str, worker_id: str,
                                 clock: Callable[[], float] = time.time) -> None:
    """Return once every other worker has seen the re-sync (a flusher's view is at most
    `VIEW_S` old) and none holds a lease on a row of `object_name`: a flush leased before it
    saw the re-sync may still write."""
    await asyncio.sleep(VIEW_S + POLL_S)
    waited = False
    while held := await store.leased_elsewhere(object_name, worker_id, clock()):
        if not waited:
            log.info("resync.waiting_for_workers", object=object_name, leased_elsewhere=held)
            waited = True
        await asyncio.sleep(POLL_S)
