"""What the status page shows, as JSON-able data: the `status` command's view of the store
(streamsync/runtime/status.py) plus what only the running service knows (latency of the last
hour, Iterable's rate budget, readiness). Dead-letter details and error messages are masked."""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from streamsync.adapters.ratelimit import RateLimiter
from streamsync.adapters.store import StoreAPI
from streamsync.config import Config
from streamsync.logs import REDACTED, SECRET_KEY_HINTS, redactor
from streamsync.runtime.health import Readiness
from streamsync.runtime.metrics import Metrics
from streamsync.runtime.status import dead_letter_dict, iso, read_status

EXAMPLES_PER_REASON = 3
RATE_WINDOW_S = 60.0
EMAIL = re.compile(r"[\w.+%-]+@[\w-]+(\.[\w-]+)+")
MASKED_EMAIL = "[email]"
# A bearer token, a `key=value` whose key names a secret, or a long opaque run of characters
# (API keys, session ids, JWT parts); Salesforce record ids (15/18 characters) and URL paths
# stay readable.
SECRET_LIKE = re.compile(
    r"(?i)\bbearer\s+\S+"
    r"|\b[\w-]*(?:" + "|".join(SECRET_KEY_HINTS) + r")[\w-]*\s*[=:]\s*(?:bearer\s+)?\S+"
    r"|[A-Za-z0-9_\-+=]{32,}")


def mask(text: str) -> str:
    """Configured secrets, secret-looking values and email addresses masked."""
    text = redactor().text(text)
    text = SECRET_LIKE.sub(REDACTED, text)
    return EMAIL.sub(MASKED_EMAIL, text)


class RateBudget:
    """Iterable requests granted over the last minute against the configured rate, from
    samples the service takes every few seconds (and one per read of the page)."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, limiter: RateLimiter, now: float) -> None:
        self._samples.append((now, limiter.granted_total))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def read(self, limiter: RateLimiter, now: float) -> dict[str, Any]:
        self.sample(limiter, now)
        first_at, first_granted = self._samples[0]
        span = now - first_at
        rate = (limiter.granted_total - first_granted) / span if span > 0 else None
        target = limiter.target_rate_per_s
        return {
            "limit_per_s": target,
            "allowed_now_per_s": round(limiter.current_rate_per_s(), 3),
            "used_per_s": None if rate is None else round(rate, 3),
            "used_fraction": None if rate is None else round(rate / target, 4),
            "measured_over_s": round(span, 1),
            "rate_limited_total": limiter.rate_limited_total,
        }


def _counter_total(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return float(value or 0.0)


def _eta(backfill: dict[str, Any] | None, now: float, started: float | None) -> dict[str, Any]:
    """Progress by windows and an ETA extrapolated from the windows done so far."""
    if backfill is None or started is None:
        return {}
    total, done = int(backfill["windows_total"]), int(backfill["windows_done"])
    elapsed = max(0.0, now - started)
    eta = None
    if not backfill["finished"] and 0 < done < total:
        eta = round(elapsed / done * (total - done), 1)
    return {"progress": round(done / total, 4) if total else None, "eta_s": eta,
            "elapsed_s": round(elapsed, 1)}


class PageData:
    """Builds `/status.json`; the service attaches its store and limiter once they are open."""

    def __init__(self, config: Config, metrics: Metrics, readiness: Callable[[], Readiness],
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.metrics = metrics
        self.readiness = readiness
        self.clock = clock
        self.store: StoreAPI | None = None
        self.limiter: RateLimiter | None = None
        self.budget = RateBudget()

    def attach(self, store: StoreAPI | None, limiter: RateLimiter | None) -> None:
        self.store, self.limiter = store, limiter

    def sample(self) -> None:
        """One rate-budget sample (the service calls this with its metrics refresh)."""
        if self.limiter is not None:
            self.budget.sample(self.limiter, self.clock())

    async def read(self) -> dict[str, Any]:
        now = self.clock()
        state = self.readiness()
        data: dict[str, Any] = {"generated_at": iso(now), "ready": state.ready,
                                "not_ready_reason": state.reason}
        if self.store is None:
            data["starting"] = True
            return data
        data.update(await read_status(self.store, self.config, now))
        data["starting"] = False
        data.pop("store", None)  # a file path is no business of a browser
        data["recent_errors"] = [{**e, "message": mask(str(e["message"]))}
                                 for e in data["recent_errors"]]
        data["dead_letters"]["examples"] = await self._examples(
            list(data["dead_letters"]["by_reason"]))
        run = await self.store.latest_run()
        if data.get("backfill") is not None:
            data["backfill"].update(_eta(data["backfill"], now, run.started_at if run else None))
            data["backfill"].pop("options", None)
        data.pop("backfill_runs", None)
        data["latency"] = [
            {"minute": iso(m.minute_start), "count": m.count, "p50_s": round(m.p50_s, 3),
             "p95_s": round(m.p95_s, 3)}
            for m in self.metrics.latency_window.minutes_of(now)]
        data["iterable"] = {
            "requests_429_total": _counter_total(
                self.metrics, "streamsync_iterable_rate_limited_total"),
            "budget": None if self.limiter is None else self.budget.read(self.limiter, now),
        }
        return data

    async def _examples(self, reasons: list[str]) -> dict[str, list[dict[str, Any]]]:
        assert self.store is not None
        out = {}
        for reason in reasons:
            letters = await self.store.dead_letters(reason, limit=EXAMPLES_PER_REASON)
            out[reason] = [{**d, "last_error": mask(str(d["last_error"]))}
                           for d in map(dead_letter_dict, letters)]
        return out
