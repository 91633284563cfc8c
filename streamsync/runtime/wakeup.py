"""Wake-ups on the real-time path: enqueues wake idle flushers; small batches are spaced.

`QueueSignal` is shared by everything in this process that makes queue rows due (ingest after
each commit, reconciliation, fan-out, a settle that kept a newer change, the end of an outage):
an idle flusher waits for it or for the next due time in the store, never for a fixed poll.

`Coalescer` keeps a trickle from being cut into one Iterable request per change: while a flush
of less than a full batch is in flight, the next small flush starts when that one returns or
`linger_s` after its lease, whichever comes first. Full batches (load) are never held back,
and a lease that comes out full lets every waiting flush go.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass


class QueueSignal:
    """A counter of "rows may be due now" notices that waiters can sleep on.

    Read `generation` before looking at the queue and pass it to `wait`: a notice that came in
    between is not missed (the wait returns at once)."""

    def __init__(self) -> None:
        self._generation = 0
        self._event = asyncio.Event()

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self, rows: int = 1) -> None:
        """Wake every waiter (called after an enqueue of `rows` committed; 0 wakes nobody)."""
        if rows <= 0:
            return
        self._generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seen: int, timeout_s: float | None) -> bool:
        """Until a notice newer than `seen`, or `timeout_s` passed (None: no limit); True when
        woken by a notice."""
        if self._generation != seen:
            return True
        if timeout_s is not None and timeout_s <= 0:
            return False
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


@dataclass
class Turn:
    """One flush's place in the `Coalescer` (`Coalescer.leased`, then `Coalescer.done`)."""

    leasing: bool
    """Granted by `Coalescer.turn` and the lease has not answered yet."""
    small: bool = False
    """The lease answered with rows, but less than a full batch."""


class Coalescer:
    """Spaces the flushes of less than a full batch within one process (see the module doc)."""

    def __init__(self, linger_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.linger_s = max(0.0, linger_s)
        self._clock = clock
        self._leasing = 0  # turns granted whose lease has not answered yet
        self._small = 0  # flushes in flight whose lease was less than a full batch
        self._small_since = 0.0  # when the latest of those leased
        self._changed = QueueSignal()

    async def turn(self, stop: asyncio.Event) -> Turn:
        """Wait until a new small flush may lease (or `stop` is set), then take the turn."""
        while True:
            seen = self._changed.generation
            now = self._clock()
            if stop.is_set() or self._leasing == 0 and (
                    self._small == 0 or now >= self._small_since + self.linger_s):
                self._leasing += 1
                return Turn(leasing=True)
            timeout = None if self._leasing else self._small_since + self.linger_s - now
            await self._changed.wait(seen, timeout)

    def under_load(self) -> Turn:
        """A turn without waiting, for the flush right after a full batch."""
        return Turn(leasing=False)

    def wake(self) -> None:
        """Re-check every waiting turn (on stop)."""
        self._changed.notify()

    def leased(self, turn: Turn, count: int, full: bool) -> None:
        """`turn`'s lease answered with `count` rows (`full`: as many as a batch holds)."""
        if turn.leasing:
            turn.leasing = False
            self._leasing -= 1
        if full:  # a backlog: the small flushes in flight hold nobody back any more
            self._small_since = -math.inf
        elif count and not turn.small:
            turn.small = True
            self._small += 1
            self._small_since = self._clock()
        self._changed.notify()

    def done(self, turn: Turn) -> None:
        """`turn`'s flush returned (or failed): let the next one start."""
        if turn.leasing:
            turn.leasing = False
            self._leasing -= 1
        if turn.small:
            turn.small = False
            self._small -= 1
        self._changed.notify()
