"""Bookkeeping of the pipeline's concurrent calls. `Generations`: calls counted by the
generation they started in, so a caller can wait for every call that began before a change (a
reloaded mapping) to finish (runtime/resync.py waits for the writes mapped with the old mapping
before it re-syncs, so none lands after it). `RecordGate`: one call at a time per record.
`ForgottenRecords`: when this process last forgot a record's identity."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator


class Generations:
    """`with gens.call():` around each call; `bump()` starts a new generation; `await
    settled()` returns once no call of an older generation is running."""

    def __init__(self) -> None:
        self.current = 0
        self._running: Counter[int] = Counter()
        self._changed = asyncio.Event()

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        gen = self.current
        self._running[gen] += 1
        try:
            yield
        finally:
            self._running[gen] -= 1
            if not self._running[gen]:
                del self._running[gen]
            self._changed.set()

    def bump(self) -> int:
        """Start a new generation; returns it."""
        self.current += 1
        return self.current

    def older_running(self, gen: int | None = None) -> int:
        """Calls still running that started before generation `gen` (default: the current)."""
        limit = self.current if gen is None else gen
        return sum(n for g, n in self._running.items() if g < limit)

    async def settled(self, gen: int | None = None) -> None:
        """Wait until every call started before generation `gen` has finished."""
        limit = self.current if gen is None else gen
        while self.older_running(limit):
            self._changed.clear()
            await self._changed.wait()


class RecordGate:
    """At most one pipeline call at a time per record (object, id) in this process: the
    re-sync and a real-time flush can hold the same record, and two writes of it racing (an
    email move twice) would conflict. A call waits until none of its records is held."""

    def __init__(self) -> None:
        self._held: set[tuple[str, str]] = set()
        self._released = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, object_name: str, ids: Iterable[str]) -> AsyncIterator[None]:
        keys = {(object_name, i) for i in ids}
        async with self._released:
            await self._released.wait_for(lambda: not keys & self._held)
            self._held |= keys
        try:
            yield
        finally:
            await self._release(keys)

    @contextlib.asynccontextmanager
    async def hold_free(self, object_name: str, ids: Iterable[str]) -> AsyncIterator[set[str]]:
        """Hold, without waiting, those of `ids` no call holds now; yields their ids."""
        async with self._released:
            keys = {(object_name, i) for i in ids} - self._held
            self._held |= keys
        try:
            yield {i for _, i in keys}
        finally:
            await self._release(keys)

    async def _release(self, keys: set[tuple[str, str]]) -> None:
        async with self._released:
            self._held -= keys
            self._released.notify_all()


FORGOTTEN_KEEP_S = 3600.0
"""How long a forgotten record is remembered: longer than a re-sync page waits to be written."""


class ForgottenRecords:
    """Records whose identity this process forgot (deleted, or left to a shared profile), and
    when. A re-sync page read before that must not write them again: with no identity left,
    nothing else in the store says the page's state is older (docs/design.md §9)."""

    def __init__(self) -> None:
        self._at: dict[tuple[str, str], float] = {}
        self._prune_above = 1000

    def note(self, object_name: str, ids: Iterable[str], at: float) -> None:
        for record_id in ids:
            self._at[(object_name, record_id)] = at
        if len(self._at) > self._prune_above:  # drop what no page can be waiting on any more
            self._at = {k: t for k, t in self._at.items() if t > at - FORGOTTEN_KEEP_S}
            self._prune_above = max(1000, 2 * len(self._at))

    def since(self, object_name: str, ids: Iterable[str], read_at: float | None) -> set[str]:
        """Those of `ids` forgotten after `read_at` (none when `read_at` is None)."""
        if read_at is None:
            return set()
        return {i for i in ids if self._at.get((object_name, i), read_at) > read_at}
