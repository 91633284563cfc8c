"""The send step of custom events: ready items to events/trackBulk in batches within its
limits, each outcome attributed to its event (docs/events.md §1, §4)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamsync.adapters.iterable import IterableClient, TrackResult
from streamsync.adapters.ratelimit import RateLimiter
from streamsync.adapters.store import StoreAPI
from streamsync.adapters.store.events import PendingEvent
from streamsync.core.batching import encode_part
from streamsync.errors import BatchError, BatchTooLarge, RetriableError, describe_error
from streamsync.logs import get_logger
from streamsync.retry import Policy

log = get_logger(__name__)

SEND_POLICY = Policy(name="event_send", attempts=3, timeout_s=60.0, wait_initial_s=0.2,
                     wait_max_s=5.0)
"""In-call retries of transient Iterable faults before the events wait out the outage."""
NOT_FOUND = "not_found"  # the profile does not exist (yet): the profile sync may create it
DISALLOWED = "disallowed_event_name"
_ENVELOPE = len(b'{"events":[]}')


@dataclass
class Sent:
    """What one send step settles: by event id."""

    sent: list[str] = field(default_factory=list)
    dead: dict[str, tuple[str, str]] = field(default_factory=dict)
    later: dict[str, tuple[str, float]] = field(default_factory=dict)
    waiting: dict[str, tuple[str, float]] = field(default_factory=dict)
    calls: int = 0


def cut_batches(items: Sequence[PendingEvent], max_events: int, max_bytes: int
                ) -> list[list[tuple[PendingEvent, bytes]]]:
    """Batches within the event count and the encoded body size, in order."""
    batches: list[list[tuple[PendingEvent, bytes]]] = []
    current: list[tuple[PendingEvent, bytes]] = []
    size = _ENVELOPE
    for pending in items:
        encoded = encode_part(pending.payload)  # held until the batch is sent: right-sized
        if current and (len(current) >= max_events or size + len(encoded) + 1 > max_bytes):
            batches.append(current)
            current, size = [], _ENVELOPE
        current.append((pending, encoded))
        size += len(encoded) + 1
    if current:
        batches.append(current)
    return batches


def _body(batch: Sequence[tuple[PendingEvent, bytes]]) -> bytes:
    return b'{"events":[' + b",".join(encoded for _, encoded in batch) + b"]}"


class EventSender:
    """Sends ready events with trackBulk through its own rate limiter (10 requests/s)."""

    def __init__(self, *, iterable: IterableClient, limiter: RateLimiter, max_events: int,
                 max_bytes: int, max_attempts: int, retry_s: float) -> None:
        self.iterable = iterable
        self._limiter = limiter
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._max_attempts = max_attempts
        self._retry_s = retry_s

    async def send(self, leased: Sequence[PendingEvent]) -> Sent:
        """Every leased row ends sent, dead, later (an attempt) or waiting (Iterable down)."""
        out = Sent()
        batches = cut_batches([p for p in leased if p.payload is not None], self._max_events,
                              self._max_bytes)
        await asyncio.gather(*(self._batch(batch, out) for batch in batches))
        return out

    async def _batch(self, batch: list[tuple[PendingEvent, bytes]], out: Sent) -> None:
        try:
            out.calls += 1
            result = await SEND_POLICY.call(
                lambda: self.iterable.track_bulk(_body(batch), self._limiter))
        except BatchTooLarge:
            if len(batch) == 1:
                self._dead(batch[0][0], "too_large", "the event is too large for trackBulk", out)
                return
            await self._halves(batch, out)
        except BatchError as exc:
            if len(batch) > 1:
                await self._halves(batch, out)
                return
            self._dead(batch[0][0], "rejected", f"{exc.code}: {exc.msg}", out)
        except RetriableError as exc:
            log.warning("events.send_waiting", events=len(batch), **describe_error(exc))
            for pending, _ in batch:
                delay = min(60.0, self._retry_s * 2 ** min(pending.attempts, 6))
                out.waiting[pending.candidate.event_id] = (str(exc), delay)
        else:
            self._attribute(batch, result, out)

    async def _halves(self, batch: list[tuple[PendingEvent, bytes]], out: Sent) -> None:
        middle = len(batch) // 2
        await self._batch(batch[:middle], out)
        await self._batch(batch[middle:], out)

    def _attribute(self, batch: Sequence[tuple[PendingEvent, bytes]], result: TrackResult,
                   out: Sent) -> None:
        for pending, _ in batch:
            item: dict[str, Any] = pending.payload or {}
            if item.get("eventName") in result.disallowed_names:
                self._dead(pending, DISALLOWED, f"Iterable refuses event name "
                                                f"{item.get('eventName')!r}", out)
                continue
            reason = result.result.reason_for(email=item.get("email"),
                                              user_id=item.get("userId"))
            if reason is None:
                out.sent.append(pending.candidate.event_id)
            elif reason == NOT_FOUND and pending.attempts + 1 < self._max_attempts:
                delay = min(300.0, self._retry_s * 2 ** pending.attempts)
                out.later[pending.candidate.event_id] = ("the user does not exist in Iterable "
                                                         "(yet)", delay)
            else:
                self._dead(pending, reason, f"Iterable did not track it: {reason}", out)

    @staticmethod
    def _dead(pending: PendingEvent, reason: str, error: str, out: Sent) -> None:
        log.warning("events.dead", event_id=pending.candidate.event_id, reason=reason)
        out.dead[pending.candidate.event_id] = (reason, error)


async def send_and_settle(store: StoreAPI, sender: EventSender, leased: Sequence[PendingEvent],
                          clock: Callable[[], float]) -> Sent:
    """Send one lease of ready rows and settle it; on any failure the lease is released, so
    its rows are due again at once (the real-time send loop and `backfill --events`)."""
    try:
        out = await sender.send(leased)
    except BaseException:
        await store.release_events(leased[0].token, clock())
        raise
    await store.settle_sent(leased[0].token, sent=out.sent, dead=out.dead,
                            later=out.later, waiting=out.waiting, now=clock())
    return out
