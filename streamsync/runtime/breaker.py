"""A circuit breaker per destination: while Salesforce or Iterable is down, nobody calls it.

    closed ──(failures_to_open failed calls in a row)──▶ open ──(probe_at passed)──▶ half-open
      ▲                                                   ▲                             │
      └──────────────── the probe got an answer ──────────┴──── the probe failed ◀──────┘

While open, callers are turned away until `probe_at`; then exactly one caller gets the probe (a
small real batch). Its failure reopens the breaker with a doubled delay (capped at `max_s`); any
answer closes it. What counts as a failure is for the caller to say: a call that failed for
the destination's reasons (connection refused, timeouts, 5xx, 429, after the caller's own
retries), never a record Iterable refused, which is an answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from streamsync.logs import get_logger, redactor

log = get_logger(__name__)

State = Literal["closed", "open", "half_open"]
ERROR_CHARS = 200


class CircuitBreaker:
    """One destination's breaker; `clock` is epoch seconds (injected in tests)."""

    def __init__(self, name: str, *, failures_to_open: int = 3, base_s: float = 1.0,
                 max_s: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        if failures_to_open < 1:
            raise ValueError(f"failures_to_open must be at least 1, got {failures_to_open}")
        if not 0 < base_s <= max_s:
            raise ValueError(f"need 0 < base_s <= max_s, got {base_s} and {max_s}")
        self.name = name
        self.failures_to_open = failures_to_open
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self.state: State = "closed"
        self.failures = 0
        """Failed calls in a row (reset by any answer)."""
        self.failed_probes = 0
        self.down_since: float | None = None
        """When the current run of failures began (None while calls succeed)."""
        self.probe_at = 0.0
        self.last_error = ""
        self.recoveries = 0
        """Outages that ended (open → closed), for whoever acts on the end of one."""
        self._retry_after_s = 0.0

    @property
    def is_open(self) -> bool:
        """True while the destination counts as down (open or probing)."""
        return self.state != "closed"

    def admit(self) -> Literal["call", "probe"] | None:
        """May a caller go ahead now: "call" (closed), "probe" (the one half-open try, which the
        caller must settle with `success`, `failure` or `inconclusive`), or None (wait)."""
        if self.state == "closed":
            return "call"
        if self.state == "open" and self.clock() >= self.probe_at:
            self.state = "half_open"
            return "probe"
        return None

    def wait_s(self) -> float:
        """Seconds until a probe may go (0 when closed or due)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.probe_at - self.clock())

    def success(self) -> bool:
        """The destination answered. True if that ends an outage (the breaker closes)."""
        ended = self.is_open
        if ended:
            self.recoveries += 1
            log.info("breaker.closed", destination=self.name,
                     down_s=round(self.clock() - (self.down_since or self.clock()), 3),
                     failed_probes=self.failed_probes)
        self.state = "closed"
        self.failures = 0
        self.failed_probes = 0
        self.down_since = None
        return ended

    def failure(self, error: str, retry_after_s: float | None = None) -> None:
        """A call failed for a reason of the destination (down, overloaded, unreachable); a
        Retry-After it sent is the least wait before the next probe."""
        now = self.clock()
        self._retry_after_s = retry_after_s or 0.0
        self.failures += 1
        self.last_error = redactor().text(error)[:ERROR_CHARS]
        if self.down_since is None:
            self.down_since = now
        if self.state == "half_open":
            self.failed_probes += 1
            self._open(now)
        elif self.state == "closed" and self.failures >= self.failures_to_open:
            self._open(now)
        # open: a call that was already under way when it opened changes nothing

    def inconclusive(self) -> None:
        """The probe sent nothing to the destination (no work): let the next caller probe."""
        if self.state == "half_open":
            self.state = "open"
            self.probe_at = self.clock()

    def _open(self, now: float) -> None:
        delay = max(min(self.max_s, self.base_s * 2.0 ** min(self.failed_probes, 62)),
                    self._retry_after_s)
        self.state = "open"
        self.probe_at = now + delay
        log.warning("breaker.open", destination=self.name, failures=self.failures,
                    failed_probes=self.failed_probes, probe_in_s=round(delay, 3),
                    error=self.last_error)

    def describe(self) -> str:
        """The outage in one line for /readyz and status (empty while closed)."""
        if not self.is_open or self.down_since is None:
            return ""
        since = datetime.fromtimestamp(self.down_since, UTC).isoformat(timespec="seconds")
        return (f"{self.name} unreachable since {since.replace('+00:00', 'Z')} "
                f"({self.failures} failed calls in a row; last error: {self.last_error})")


class Signals:
    """What one unit of work learned about each destination: answered, or failed (why)."""

    def __init__(self) -> None:
        self.answered: set[str] = set()
        self.failed: dict[str, str] = {}

    def ok(self, destination: str) -> None:
        self.answered.add(destination)

    def fail(self, destination: str, error: str) -> None:
        self.failed[destination] = error


class Breakers:
    """The breakers of every destination one unit of work needs (all must admit it)."""

    def __init__(self, breakers: dict[str, CircuitBreaker]) -> None:
        self.by_name = breakers

    def admit(self) -> set[str] | None:
        """None while any destination is down and not due for a probe; otherwise the names of
        the destinations this caller probes (empty: all closed)."""
        if any(b.state == "half_open" or (b.state == "open" and b.wait_s() > 0)
               for b in self.by_name.values()):
            return None
        return {name for name, b in self.by_name.items() if b.admit() == "probe"}

    def wait_s(self) -> float:
        """Seconds until the next probe of an open breaker may go (0 if none is waiting)."""
        return max((b.wait_s() for b in self.by_name.values()), default=0.0)

    def recoveries(self) -> int:
        """Outages that ended so far, all destinations together."""
        return sum(b.recoveries for b in self.by_name.values())

    def report(self, signals: Signals, probing: set[str]) -> None:
        """Settle each breaker from `signals` (an answer beats a failure: the destination is
        up); a probe that learned nothing lets the next caller probe."""
        for name, breaker in self.by_name.items():
            if name in signals.answered:
                breaker.success()
            elif name in signals.failed:
                breaker.failure(signals.failed[name])
            elif name in probing:
                breaker.inconclusive()

    def outage(self) -> str:
        """The open breakers, described (empty when every destination is up)."""
        return "; ".join(b.describe() for b in self.by_name.values() if b.is_open)
