"""The shared budget's booking rule (adapters/store/budget_plan.py), simulated on a fake clock:
slots never closer than the ceiling allows, each kind's guaranteed share, idle budget taken."""

from __future__ import annotations

import heapq

import pytest

from streamsync.adapters.store.budget_plan import (
    HORIZON_S,
    MAX_AHEAD_S,
    SHARES,
    ClaimRequest,
    DrawerKind,
    book,
)

RATE = 5.0


class Sim:
    """Drawers booking from one budget: each sends at every slot it booked and, while it has
    demand, books again when its slots run out (or at the `retry_at` it was given)."""

    def __init__(self) -> None:
        self.tat: float | None = None
        self.lanes: dict[str, float | None] = {"service": None, "backfill": None}
        self.sent: dict[str, list[float]] = {}
        self.waits: list[float] = []

    def claim(self, kind: DrawerKind, now: float, want: int) -> tuple[list[float], float | None]:
        b = book(now, self.tat, self.lanes[kind], ClaimRequest(kind, want, RATE))
        self.tat, self.lanes[kind] = b.tat, b.lane_tat
        return list(b.slots), b.retry_at

    def run(self, drawers: dict[str, tuple[DrawerKind, float | None]], until: float) -> None:
        """`drawers`: name → (kind, seconds between requests, or None: always busy). A busy
        drawer books 4 slots and books again once its first request has returned (50 ms after
        its first slot); a trickle books one slot when a request comes, which waits for it."""
        events: list[tuple[float, str]] = [(0.001 * i, name) for i, name in enumerate(drawers)]
        need = {name: 0.001 * i for i, name in enumerate(drawers)}
        while events:
            now, name = heapq.heappop(events)
            if now > until:
                break
            kind, every = drawers[name]
            slots, retry_at = self.claim(kind, now, 4 if every is None else 1)
            if not slots:
                assert retry_at is not None and retry_at >= now
                heapq.heappush(events, (max(retry_at, now + 1e-6), name))
                continue
            self.sent.setdefault(name, []).extend(slots)
            if every is None:
                heapq.heappush(events, (max(now, slots[0]) + 0.05, name))
            else:
                self.waits.append(slots[0] - need[name])
                need[name] = max(need[name] + every, slots[0])
                heapq.heappush(events, (need[name], name))


def _all_sends(sim: Sim) -> list[float]:
    return sorted(t for times in sim.sent.values() for t in times)


def _rate(times: list[float], start: float, end: float) -> float:
    return sum(1 for t in times if start <= t < end) / (end - start)


def test_slots_of_every_drawer_together_keep_the_ceiling() -> None:
    sim = Sim()
    sim.run({"svc-1": ("service", None), "svc-2": ("service", None),
             "bf-1": ("backfill", None), "bf-2": ("backfill", None)}, until=60.0)
    sends = _all_sends(sim)
    gaps = [b - a for a, b in zip(sends, sends[1:], strict=False)]
    assert min(gaps) >= 1.0 / RATE - 1e-9
    assert _rate(sends, 5.0, 55.0) >= 0.99 * RATE


def test_each_kind_keeps_its_share_when_both_are_busy() -> None:
    sim = Sim()
    sim.run({"service": ("service", None), "backfill": ("backfill", None)}, until=60.0)
    service = _rate(sim.sent["service"], 5.0, 55.0) / RATE
    backfill = _rate(sim.sent["backfill"], 5.0, 55.0) / RATE
    assert service >= SHARES["service"] - 0.05
    assert backfill >= SHARES["backfill"] - 0.05
    assert service + backfill >= 0.98


@pytest.mark.parametrize("idle", ["service", "backfill"])
def test_what_one_kind_leaves_the_other_takes(idle: str) -> None:
    busy: DrawerKind = "backfill" if idle == "service" else "service"
    sim = Sim()
    # the other kind sends a trickle: one request every 2 s
    other: DrawerKind = "service" if busy == "backfill" else "backfill"
    sim.run({"busy": (busy, None), "trickle": (other, 2.0)}, until=60.0)
    assert _rate(_all_sends(sim), 5.0, 55.0) >= 0.95 * RATE
    assert len(sim.waits) >= 25 and max(sim.waits) <= HORIZON_S + 1e-9


def test_a_lone_request_after_a_busy_backfill_waits_at_most_the_horizon() -> None:
    sim = Sim()
    for i in range(50):  # a backfill books as fast as it can for a while
        sim.claim("backfill", i * 0.05, 4)
    slots, _retry = sim.claim("service", 2.5, 1)
    assert slots and slots[0] - 2.5 <= HORIZON_S + 1e-9


def test_a_clock_stepping_back_does_not_stall_the_budget() -> None:
    stale = 1_000_000.0
    b = book(stale - 3600.0, stale + 0.4, stale + 0.8, ClaimRequest("service", 2, RATE))
    assert b.slots == (stale - 3600.0, stale - 3600.0 + 0.2)
    b = book(100.0, 100.0 + MAX_AHEAD_S - 1, None, ClaimRequest("service", 1, RATE))
    assert b.slots == () and b.retry_at is not None  # a legitimate far booking is kept


def test_a_pause_after_a_429_pushes_every_drawer_back() -> None:
    paused = book(10.0, None, None, ClaimRequest("service", 1, RATE, pause_s=3.0))
    assert paused.slots == () and paused.tat == 13.0
    assert paused.retry_at == pytest.approx(13.0 - HORIZON_S)
    other = book(10.5, paused.tat, None, ClaimRequest("backfill", 1, RATE))
    assert other.slots == ()
    later = book(12.0, paused.tat, None, ClaimRequest("backfill", 1, RATE))
    assert later.slots == (13.0,)


def test_requests_are_checked() -> None:
    for bad in ({"kind": "other", "want": 1, "rate_per_s": 1.0},
                {"kind": "service", "want": 0, "rate_per_s": 1.0},
                {"kind": "service", "want": 1, "rate_per_s": 0.0}):
        with pytest.raises(ValueError):
            ClaimRequest(**bad)  # type: ignore[arg-type]
