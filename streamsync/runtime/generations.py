"""Calls counted by the generation they started in, so a caller can wait for every call that
began before a change (a reloaded mapping) to finish (runtime/resync.py waits for the
pipeline's writes mapped with the old mapping before it re-syncs, so none lands after it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator


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
