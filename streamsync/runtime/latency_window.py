"""Commit → Iterable latency of the last hour, per minute (p50/p95), kept in memory for the
status page (streamsync/runtime/statuspage/)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

WINDOW_MINUTES = 60
SAMPLES_PER_MINUTE = 2_000


@dataclass(frozen=True)
class MinuteLatency:
    """Latency quantiles of the records confirmed in one wall-clock minute."""

    minute_start: float
    count: int
    p50_s: float
    p95_s: float


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted, non-empty list."""
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


class LatencyWindow:
    """A ring of per-minute samples over the last `minutes`; a busy minute keeps a uniform
    reservoir of `cap` samples so memory stays bounded whatever the throughput."""

    def __init__(self, minutes: int = WINDOW_MINUTES, cap: int = SAMPLES_PER_MINUTE) -> None:
        self.minutes = minutes
        self.cap = cap
        self._slots: dict[int, tuple[int, list[float]]] = {}  # minute -> (seen, reservoir)
        self._rng = random.Random(0)

    def observe(self, latency_s: float, now: float) -> None:
        minute = int(now // 60)
        seen, samples = self._slots.get(minute, (0, []))
        seen += 1
        if len(samples) < self.cap:
            samples.append(latency_s)
        else:
            index = self._rng.randrange(seen)
            if index < self.cap:
                samples[index] = latency_s
        self._slots[minute] = (seen, samples)
        self._forget(minute)

    def _forget(self, minute: int) -> None:
        for old in [m for m in self._slots if m <= minute - self.minutes]:
            del self._slots[old]

    def minutes_of(self, now: float) -> list[MinuteLatency]:
        """The minutes of the last hour that had confirmations, oldest first."""
        current = int(now // 60)
        out = []
        for minute in sorted(self._slots):
            if minute <= current - self.minutes or minute > current:
                continue
            seen, samples = self._slots[minute]
            ordered = sorted(samples)
            out.append(MinuteLatency(minute * 60.0, seen, _quantile(ordered, 0.5),
                                     _quantile(ordered, 0.95)))
        return out
