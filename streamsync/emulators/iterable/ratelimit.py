"""Per-project, per-endpoint token buckets at Iterable's rates, with an injectable clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

Clock = Callable[[], float]

# Requests per second per project, from the swagger descriptions of each endpoint.
DEFAULT_RATES: Final[dict[str, float]] = {
    "bulkUpdate": 5.0,
    "update": 500.0,
    "get": 100.0,
    "delete": 100.0,
    "getFields": 3.0,
    "forget": 3.0,
    "track": 2000.0,
    "trackBulk": 10.0,
    "getEvents": 100.0,
    "channels": 100.0,
    "messageTypes": 100.0,
    "getLists": 100.0,
    "exportData": 4.0 / 60.0,
    "listSize": 5.0 / 60.0,
    "listUsers": 5.0 / 60.0,
}
# Bucket sizes of the per-minute limits: a minute's worth may arrive at once.
DEFAULT_BURST: Final[dict[str, float]] = {"exportData": 4.0, "listSize": 5.0, "listUsers": 5.0}
FORGET_DAILY_CAP: Final = 1000
_DAY_S: Final = 86_400.0


@dataclass(frozen=True)
class Limit:
    """A sustained rate and the bucket size (how many requests may arrive at once)."""

    rate_per_s: float
    burst: float

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError(f"a limit needs rate_per_s > 0 and burst >= 1, got {self}")


class TokenBucket:
    """A bucket of `burst` tokens refilled at `rate_per_s`; each request takes one token."""

    __slots__ = ("limit", "tokens", "stamp")

    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self.tokens = limit.burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is available."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.limit.burst, self.tokens + elapsed * self.limit.rate_per_s)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.limit.rate_per_s


class RateLimiter:
    """Buckets keyed by (project, endpoint group); groups without a limit are never throttled.

    `retry_after` decides the `Retry-After` header of a 429: None (the default) sends none, since
    Iterable is not known to send it; "auto" sends the whole seconds until a token is free; a
    number sends that number.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        rates: dict[str, float] | None = None,
        burst: dict[str, float] | None = None,
    ) -> None:
        self.clock = clock
        self._defaults = self._build(rates or DEFAULT_RATES, {**DEFAULT_BURST, **(burst or {})})
        self._limits: dict[str, Limit] = dict(self._defaults)
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self.retry_after: float | str | None = None
        self.forget_daily_cap: int | None = FORGET_DAILY_CAP
        self._forget_calls: dict[str, list[float]] = {}

    @staticmethod
    def _build(rates: dict[str, float], burst: dict[str, float]) -> dict[str, Limit]:
        return {g: Limit(r, burst.get(g, max(1.0, r))) for g, r in rates.items()}

    def limits(self) -> dict[str, dict[str, float]]:
        """The limits in force, by endpoint group."""
        return {
            g: {"rate_per_s": lim.rate_per_s, "burst": lim.burst}
            for g, lim in self._limits.items()
        }

    def set_limit(self, group: str, rate_per_s: float, burst: float | None = None) -> None:
        """Change one group's limit (burst defaults to one second's worth); buckets refill."""
        size = burst if burst is not None else max(1.0, rate_per_s)
        self._limits[group] = Limit(rate_per_s, size)
        self._drop_buckets(group)

    def lift(self, group: str | None = None) -> None:
        """Remove the limit of one group, or of every group (and the forget daily cap)."""
        if group is None:
            self._limits.clear()
            self._buckets.clear()
            self.forget_daily_cap = None
        else:
            self._limits.pop(group, None)
            self._drop_buckets(group)

    def restore(self) -> None:
        """Put back the documented limits and the forget daily cap."""
        self._limits = dict(self._defaults)
        self._buckets.clear()
        self.forget_daily_cap = FORGET_DAILY_CAP

    def _drop_buckets(self, group: str) -> None:
        for key in [k for k in self._buckets if k[1] == group]:
            del self._buckets[key]

    def check(self, project: str, group: str) -> float:
        """Admit one request: 0.0 if allowed, else the seconds until the bucket has a token."""
        limit = self._limits.get(group)
        if limit is None:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get((project, group))
        if bucket is None:
            bucket = self._buckets[(project, group)] = TokenBucket(limit, now)
        return bucket.take(now)

    def check_forget_cap(self, project: str) -> bool:
        """Count one forget call against the project's rolling 24-hour cap; False when over it."""
        if self.forget_daily_cap is None:
            return True
        now = self.clock()
        calls = [t for t in self._forget_calls.get(project, []) if now - t < _DAY_S]
        if len(calls) >= self.forget_daily_cap:
            self._forget_calls[project] = calls
            return False
        calls.append(now)
        self._forget_calls[project] = calls
        return True

    def retry_after_header(self, wait_s: float) -> str | None:
        """The `Retry-After` value for a 429 that must wait `wait_s`, or None when disabled."""
        if self.retry_after is None:
            return None
        if self.retry_after == "auto":
            return str(max(1, math.ceil(wait_s)))
        return str(int(float(self.retry_after)))
