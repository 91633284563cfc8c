"""The one retry mechanism (stamina) and the one jitter function.

Every in-process retry declares its policy at the call site:

    page = await Policy(attempts=5, timeout_s=60).call(lambda: client.query_page(url))

`Policy.call` runs `fn` under stamina: exponential backoff with jitter, capped by attempts and
by a time budget. A `retry_after_s` carried by the error (errors.py, from a Retry-After header)
replaces the backoff through stamina's backoff hook, and a wait the budget cannot hold ends the
retries at once. Tests switch every wait off with the one global switch `stamina.set_testing`.
The store's persisted `Backoff` schedule (adapters/store/types.py) is data, not a retry loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import stamina
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

from streamsync.errors import RetriableError, Stopped, describe_error
from streamsync.logs import get_logger

T = TypeVar("T")

log = get_logger(__name__)


def jitter(ceiling_s: float, *, floor_s: float = 0.0,
           rand: Callable[[], float] = random.random) -> float:
    """A random wait in [floor_s, ceiling_s]: the one jitter function of streamsync (`rand`, a
    number in [0, 1), is injectable so tests can pin it)."""
    if ceiling_s <= floor_s:
        return max(ceiling_s, 0.0)
    return floor_s + (ceiling_s - floor_s) * rand()


def retry_after_of(error: BaseException) -> float | None:
    """The positive wait the remote side asked for with `error`, else None."""
    value = getattr(error, "retry_after_s", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


@dataclass(frozen=True)
class Policy:
    """How one call site retries: at most `attempts` tries (None: no limit) within `timeout_s`
    seconds (None: no budget), waits growing from `wait_initial_s` to `wait_max_s`, on errors
    of `on`. `on_retry(error)` is told of every failure that will be retried (for counters)."""

    attempts: int | None = 5
    timeout_s: float | None = 60.0
    wait_initial_s: float = 0.5
    wait_max_s: float = 30.0
    on: tuple[type[Exception], ...] = (RetriableError,)
    on_retry: Callable[[Exception], None] | None = field(default=None, compare=False)
    name: str = "call"
    """What is retried, for the `retry.scheduled` log line (e.g. "writer", "describes")."""

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.wait_initial_s < 0 or self.wait_max_s < 0:
            raise ValueError("wait_initial_s and wait_max_s must not be negative")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {self.timeout_s}")

    def backoff_hook(self, started: float) -> Callable[[Exception], bool | float]:
        """stamina's `on=` hook: False (give up), True (exponential backoff) or the seconds a
        Retry-After asked for, plus a little jitter so waiting callers do not return at once."""

        def hook(error: Exception) -> bool | float:
            if not isinstance(error, self.on) or not getattr(error, "retry_in_place", True):
                return False
            after = retry_after_of(error)
            wait: bool | float = True
            if after is not None:
                wait = after + jitter(min(self.wait_initial_s, after))
                elapsed = time.monotonic() - started
                if self.timeout_s is not None and wait > self.timeout_s - elapsed:
                    return False  # the budget cannot hold the wait: fail now, not after it
            if self.on_retry is not None:
                self.on_retry(error)
            return wait

        return hook

    async def call(self, fn: Callable[[], Awaitable[T]],
                   stop: asyncio.Event | None = None) -> T:
        """Await `fn()` until it succeeds, raises an error not in `on`, or the attempts or the
        time budget are spent (then the last error is raised unchanged).

        With `stop`: once it is set, no new attempt starts and a wait ends at once, raising
        Stopped; an attempt under way is not interrupted (its result or error stands)."""
        if stop is not None:
            return await self._call_until(fn, stop)
        if self.attempts == 1:
            return await fn()
        token = _CALL_NAME.set(self.name)
        try:
            return await self._stamina(fn)
        finally:
            _CALL_NAME.reset(token)

    async def _stamina(self, fn: Callable[[], Awaitable[T]]) -> T:
        caller = stamina.AsyncRetryingCaller(
            attempts=self.attempts,
            timeout=self.timeout_s,
            wait_initial=self.wait_initial_s,
            wait_max=self.wait_max_s,
            wait_jitter=self.wait_initial_s,
        ).on(self.backoff_hook(time.monotonic()))
        return await caller(fn)


    def attempts_of(self) -> AsyncIterator[stamina.Attempt]:
        """The same retries as `call`, for a block that cannot be one call (a generator that
        yields pages as it reads them): `async for attempt in policy.attempts_of():` then
        `with attempt:` around the block; an error the block raises is retried like `call`."""
        return stamina.retry_context(
            on=self.backoff_hook(time.monotonic()),
            attempts=self.attempts,
            timeout=self.timeout_s,
            wait_initial=self.wait_initial_s,
            wait_max=self.wait_max_s,
            wait_jitter=self.wait_initial_s,
        ).__aiter__()

    async def _call_until(self, fn: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
        current: asyncio.Future[T] | None = None

        async def guarded() -> T:
            nonlocal current
            if stop.is_set():
                raise Stopped("asked to stop before the next attempt")
            current = asyncio.ensure_future(fn())
            return await asyncio.shield(current)

        runner = asyncio.ensure_future(self.call(guarded))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({runner, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
        if not runner.cancelled():
            return runner.result()
        if current is not None and not current.done():
            return await current  # an attempt under way ends on its own: its result stands
        if current is not None and not current.cancelled() and current.exception() is None:
            return current.result()
        raise Stopped("asked to stop while waiting to retry")


NO_RETRY = Policy(attempts=1)


_CALL_NAME: contextvars.ContextVar[str] = contextvars.ContextVar("retry_call", default="call")


def _log_retry(details: RetryDetails) -> None:
    error = details.caused_by
    log.info("retry.scheduled", call=_CALL_NAME.get(), attempt=details.retry_num,
             wait_s=round(details.wait_for, 3), **describe_error(error))


set_on_retry_hooks([_log_retry])
