"""Subscribe requests for one list that wait for the same rate-limited slot go out as one call.

Iterable takes up to `max_subscribers` emails per lists/subscribe call at an (assumed) few
calls per second (docs/iterable.md §13); flusher loops that each hold part of a burst would
otherwise spend a slot each on a part-full call. A request joins the pending ones of its list;
a sender takes as many whole requests as fit in one call only once its rate-limiter slot is
granted, so what arrived while it waited rides along. Each request gets the call's reply (or its
error) and judges its own emails; retries stay with the caller (the pipeline writer's `call`).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from streamsync.adapters.iterable import BulkResult

Send = Callable[[int, Callable[[], list[str]]], Awaitable[BulkResult]]


@dataclass
class _Request:
    emails: list[str]
    future: asyncio.Future[BulkResult]


class SubscribeJoiner:
    """At most `senders` calls per list at once; each takes whole pending requests, oldest
    first, up to `max_subscribers` emails, when `send` asks for them (after its slot)."""

    def __init__(self, send: Send, max_subscribers: int, senders: int = 2) -> None:
        self._send = send
        self._max = max_subscribers
        self._senders = senders
        self._pending: dict[int, deque[_Request]] = defaultdict(deque)
        self._running: dict[int, int] = defaultdict(int)
        self._tasks: set[asyncio.Task[None]] = set()

    async def subscribe(self, list_id: int, emails: list[str]) -> BulkResult:
        future: asyncio.Future[BulkResult] = asyncio.get_running_loop().create_future()
        self._pending[list_id].append(_Request(list(emails), future))
        while self._running[list_id] < self._senders and \
                self._waiting(list_id) > self._running[list_id] * self._max:
            self._running[list_id] += 1
            task = asyncio.create_task(self._drain(list_id), name=f"lists.join.{list_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    def _waiting(self, list_id: int) -> int:
        """Emails pending for the list (a second sender starts only for more than a call)."""
        return sum(len(r.emails) for r in self._pending[list_id])

    def _take(self, list_id: int) -> list[_Request]:
        pending = self._pending[list_id]
        taken: list[_Request] = []
        size = 0
        while pending and (not taken or size + len(pending[0].emails) <= self._max):
            request = pending.popleft()
            if request.future.done():  # its caller gave up (cancelled)
                continue
            taken.append(request)
            size += len(request.emails)
        return taken

    async def _drain(self, list_id: int) -> None:
        try:
            while self._pending[list_id]:
                await self._one_call(list_id)
        finally:
            self._running[list_id] -= 1

    async def _one_call(self, list_id: int) -> None:
        taken: list[_Request] = []

        def emails() -> list[str]:
            if not taken:
                taken.extend(self._take(list_id))
            return sorted({e for r in taken for e in r.emails})

        try:
            result = await self._send(list_id, emails)
        except Exception as exc:  # noqa: BLE001 - handed to every request it carried
            for request in taken or self._take(list_id):
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        for request in taken:
            if not request.future.done():
                request.future.set_result(result)
