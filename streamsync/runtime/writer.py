"""The Iterable write stage: bulk batches with retries, splitting, poison isolation, attribution."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from streamsync.adapters.iterable import BulkResult, IterableClient
from streamsync.core.batching import Batch, BatchCutter
from streamsync.errors import (
    BatchError,
    BatchTooLarge,
    CircuitOpen,
    RateLimited,
    RecordError,
    RetriableError,
    StreamsyncError,
)
from streamsync.logs import get_logger
from streamsync.models import DeadLetterReason, MappedUser
from streamsync.retry import Policy
from streamsync.runtime.breaker import CircuitBreaker

log = get_logger(__name__)

T = TypeVar("T")

SINGLE_CALL_MAX_USERS = 4
"""A rejected group this small is isolated with single-user calls instead of more halving."""


@dataclass
class WriteOutcome:
    """What Iterable did with a set of users; every user given lands in exactly one list."""

    synced: list[MappedUser] = field(default_factory=list)
    dead: list[tuple[MappedUser, str, str]] = field(default_factory=list)  # user, reason, detail
    retry: list[tuple[MappedUser, RetriableError]] = field(default_factory=list)
    requests: int = 0
    rate_limited: int = 0

    def extend(self, other: WriteOutcome) -> None:
        """Add another outcome's users and counters to this one."""
        self.synced.extend(other.synced)
        self.dead.extend(other.dead)
        self.retry.extend(other.retry)
        self.requests += other.requests
        self.rate_limited += other.rate_limited

    def failed_ids(self) -> set[str]:
        """The Salesforce ids of the users that did not get through (dead or to retry)."""
        return {u.sf_id for u, _ in self.retry} | {u.sf_id for u, _, _ in self.dead}


DEFAULT_POLICY = Policy(name="writer", attempts=3, timeout_s=60.0, wait_initial_s=0.2,
                        wait_max_s=5.0)
"""In-call retries of transient Iterable faults before records go back to the queue."""


def attribute_failures(users: Sequence[MappedUser], result: BulkResult
                       ) -> tuple[list[MappedUser], list[tuple[MappedUser, str, str]]]:
    """Split a 200 reply's users into confirmed and failed (reason, detail), by email/userId.

    Every user sent under a failed identifier fails (duplicates in one batch included); the
    email moved through `dataFields.email` (hybrid email change) is checked too.
    """
    ok: list[MappedUser] = []
    failed: list[tuple[MappedUser, str, str]] = []
    if not result.failures:
        return list(users), failed
    for user in users:
        reason = result.reason_for(email=user.email, user_id=user.user_id)
        data = user.payload.get("dataFields")
        moved = data.get("email") if isinstance(data, dict) else None
        if reason is None and isinstance(moved, str):
            reason = result.reason_for(email=moved)
        if reason is None:
            ok.append(user)
        else:
            failed.append((user, reason, f"iterable bulkUpdate reported {user.key!r} as "
                                         f"{reason}"))
    return ok, failed


class IterableWriter:
    """Sends pre-cut batches to bulkUpdate; how many are outstanding at once and how fast they
    go is the Iterable client's one RateLimiter (its `bulk_limiter`), not the writer's.

    Transient faults (429, 5xx, timeouts, network) are retried in place per `policy`, honouring
    Retry-After, then handed back as `retry`. A batch that is too large is halved. A batch
    rejected whole (type mismatch or another 400) is bisected, small remainders sent with
    single-user calls, so only the offending users are dead-lettered.
    """

    def __init__(self, iterable: IterableClient, *, policy: Policy = DEFAULT_POLICY,
                 envelope: dict[str, Any] | None = None,
                 breaker: CircuitBreaker | None = None) -> None:
        self.iterable = iterable
        self.policy = policy
        self.envelope = dict(envelope or {})
        self.breaker = breaker
        """Iterable's circuit breaker (the flusher's): told of every call's fate; while it is
        open, calls fail at once instead of waiting out timeouts and retries."""

    # -- public ------------------------------------------------------------------------------

    async def write(self, batches: Sequence[Batch]) -> WriteOutcome:
        """Send every batch (concurrently, bounded); the combined outcome."""
        parts = await asyncio.gather(*(self.write_batch(b) for b in batches))
        total = WriteOutcome()
        for part in parts:
            total.extend(part)
        return total

    async def write_batch(self, batch: Batch) -> WriteOutcome:
        """Send one batch and settle each of its users."""
        out = WriteOutcome()
        await self._send(batch.users, batch.body, out)
        return out

    async def update_single(self, user: MappedUser) -> WriteOutcome:
        """POST /api/users/update for one user, with the same retry and outcome rules."""
        out = WriteOutcome()
        await self._single(user, out)
        return out

    async def call(self, fn: Callable[[], Awaitable[T]], out: WriteOutcome) -> T:
        """Run one Iterable call with in-place retries of transient faults (counted in `out`).
        Raises the last RetriableError once the attempts are spent (or at once while the
        breaker is open); other errors pass. An answer, a refusal included, tells the breaker
        Iterable is up; spent retries tell it a call failed."""
        breaker = self.breaker

        async def attempt() -> T:
            if breaker is not None and breaker.state == "open":
                raise CircuitOpen(breaker.describe() or f"{breaker.name} is unreachable")
            out.requests += 1
            try:
                result = await fn()
            except RateLimited:
                out.rate_limited += 1
                raise
            except RetriableError:
                raise
            except StreamsyncError:
                if breaker is not None:
                    breaker.success()
                raise
            if breaker is not None:
                breaker.success()
            return result

        try:
            return await self.policy.call(attempt)
        except CircuitOpen:
            raise
        except RetriableError as exc:
            if breaker is not None:
                breaker.failure(str(exc), exc.retry_after_s)
            raise

    async def settle(self, user: MappedUser, fn: Callable[[], Awaitable[object]],
                     out: WriteOutcome, *,
                     dead_as: Callable[[RecordError], tuple[str, str]] | None = None) -> None:
        """Run one single-user call through `call` and settle `user` by its fate: synced,
        handed back (a RetriableError) or dead-lettered (a RecordError: its reason and detail,
        or what `dead_as` makes of it)."""
        try:
            await self.call(fn, out)
        except RetriableError as exc:
            out.retry.append((user, exc))
        except RecordError as exc:
            reason, detail = (dead_as(exc) if dead_as is not None
                              else (exc.reason, exc.detail or str(exc)))
            out.dead.append((user, reason, detail))
        else:
            out.synced.append(user)

    # -- internals ---------------------------------------------------------------------------

    def _body(self, users: Sequence[MappedUser]) -> bytes:
        cutter = BatchCutter(max_users=len(users), max_bytes=2**62, envelope=self.envelope)
        for user in users:
            cutter.add(user)
        batch = cutter.flush()
        assert batch is not None
        return batch.body

    async def _send(self, users: Sequence[MappedUser], body: bytes | None,
                    out: WriteOutcome) -> None:
        if not users:
            return
        payload = body if body is not None else self._body(users)
        try:
            result = await self.call(lambda: self.iterable.bulk_update(payload), out)
        except RetriableError as exc:
            out.retry.extend((u, exc) for u in users)
            return
        except BatchTooLarge as exc:
            if len(users) == 1:
                out.dead.append((users[0], DeadLetterReason.TOO_LARGE, exc.msg))
                return
            log.info("writer.split", users=len(users), reason="too_large")
            await self._halves(users, out)
            return
        except BatchError as exc:
            await self._isolate(users, exc, out)
            return
        ok, failed = attribute_failures(users, result)
        out.synced.extend(ok)
        for user, reason, detail in failed:
            if reason == DeadLetterReason.INVALID_DATA:
                await self._explain_invalid_data(user, detail, out)
            else:
                out.dead.append((user, reason, detail))

    async def _explain_invalid_data(self, user: MappedUser, reported: str,
                                    out: WriteOutcome) -> None:
        """bulkUpdate lists a user under invalidData* without saying which field is wrong; a
        single-user update of the same user is refused with the field and the type Iterable
        expects (RequestFieldsTypesMismatched), which the dead letter then names. If that
        update goes through after all, the user is synced."""
        data = orjson.dumps(user.payload)
        await self.settle(user, lambda: self.iterable.update_user(orjson.loads(data)), out,
                          dead_as=lambda exc: (DeadLetterReason.INVALID_DATA,
                                               f"{reported}: {exc.detail or exc}"))

    async def _halves(self, users: Sequence[MappedUser], out: WriteOutcome) -> None:
        mid = len(users) // 2
        await self._send(users[:mid], None, out)
        await self._send(users[mid:], None, out)

    async def _isolate(self, users: Sequence[MappedUser], exc: BatchError,
                       out: WriteOutcome) -> None:
        """A whole-batch rejection: find the users that cause it."""
        log.info("writer.isolate", users=len(users), code=exc.code)
        if len(users) <= SINGLE_CALL_MAX_USERS:
            for user in users:
                await self._single(user, out)
            return
        await self._halves(users, out)

    async def _single(self, user: MappedUser, out: WriteOutcome) -> None:
        data = orjson.dumps(user.payload)
        await self.settle(user, lambda: self.iterable.update_user(orjson.loads(data)), out)

