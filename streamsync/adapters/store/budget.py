"""The shared Iterable rate budget in the store: slots booked in one transaction on the store's
clock (the booking rule is `budget_plan.book`), and who is drawing, for `status`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiosqlite

from .base import StoreBase
from .budget_plan import ALL, Booking, ClaimRequest, DrawerKind, book

RATE_WINDOW_S: Final = 5.0
"""A drawer's rate is the slots it booked over a window of about this length."""
DRAWING_WITHIN_S: Final = 10.0
"""A drawer that booked within this long is listed as drawing."""
FORGET_DRAWER_S: Final = 3600.0
"""A drawer row not heard from for this long is deleted (its process is gone)."""
NOW_SQL: Final = "SELECT (julianday('now') - 2440587.5) * 86400.0"
"""The store's clock, epoch seconds (SQLite: this machine's wall clock, to the millisecond)."""


@dataclass(frozen=True, slots=True)
class Drawer:
    """Who draws from a budget: a process booking slots, and its recent rate."""

    drawer_id: str
    kind: DrawerKind
    pid: int
    host: str
    joined_at: float
    last_claim_at: float
    slots_total: int
    rate_per_s: float


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """A budget in use: its ceiling, the rate being booked now, and the drawers doing it."""

    budget_key: str
    ceiling_per_s: float
    drawing_per_s: float
    drawers: tuple[Drawer, ...]

    @property
    def used_fraction(self) -> float:
        return self.drawing_per_s / self.ceiling_per_s


@dataclass(frozen=True, slots=True)
class DrawerIdentity:
    """The process booking slots: its id (unique per limiter), kind, pid and host."""

    drawer_id: str
    kind: DrawerKind
    pid: int
    host: str


DRAWER_UPSERT: Final = """
INSERT INTO rate_budget_drawer (budget_key, drawer_id, kind, pid, host, joined_at,
                                last_claim_at, slots_total, window_start, window_slots,
                                booked_until)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (budget_key, drawer_id) DO UPDATE SET
    last_claim_at = excluded.last_claim_at,
    slots_total = slots_total + excluded.slots_total,
    booked_until = max(booked_until, excluded.booked_until),
    last_rate_per_s = CASE WHEN excluded.last_claim_at - window_start >= ?
        THEN window_slots / (max(booked_until, excluded.last_claim_at) - window_start)
        ELSE last_rate_per_s END,
    window_slots = CASE WHEN excluded.last_claim_at - window_start >= ?
        THEN excluded.window_slots ELSE window_slots + excluded.window_slots END,
    window_start = CASE WHEN excluded.last_claim_at - window_start >= ?
        THEN excluded.last_claim_at ELSE window_start END
"""
LANE_UPSERT: Final = """
INSERT INTO rate_budget (budget_key, lane, tat, rate_per_s, updated_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (budget_key, lane) DO UPDATE SET
    tat = excluded.tat, rate_per_s = excluded.rate_per_s, updated_at = excluded.updated_at
"""


async def store_now(conn: aiosqlite.Connection) -> float:
    async with conn.execute(NOW_SQL) as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return float(row[0])


def drawer_rate(row: Sequence[Any], now: float) -> float:
    """Slots per second over about the last `RATE_WINDOW_S`. The current window's slots are
    spread from its start to the last slot booked (bookings run up to a second ahead); the
    previous window's rate fills the part of `RATE_WINDOW_S` the current one does not cover
    yet (`row`: window_start, window_slots, last_rate_per_s, booked_until, joined_at)."""
    window_start, window_slots, last_rate = float(row[0]), int(row[1]), float(row[2])
    booked_until, joined_at = float(row[3]), float(row[4])
    span = max(now, booked_until) - window_start
    if window_start <= joined_at:  # its first window: nothing before it to carry
        return window_slots / max(1.0, span)
    carried = last_rate * max(0.0, RATE_WINDOW_S - span)
    return (window_slots + carried) / max(RATE_WINDOW_S, span)


def booked_until(booking: Booking, req: ClaimRequest, now: float) -> float:
    """Where a booking's slots end: one interval after its last slot (now when none)."""
    return booking.slots[-1] + 1.0 / req.rate_per_s if booking.slots else now


class BudgetOps(StoreBase):
    """`rate_budget` (the slot schedules) and `rate_budget_drawer` (who books)."""

    async def claim_slots(self, budget_key: str, drawer: DrawerIdentity,
                          req: ClaimRequest) -> Booking:
        """Book up to `req.want` send slots of `budget_key` for `drawer`, atomically with every
        other process on this store; times are the store's clock (`Booking.now`)."""
        if req.kind != drawer.kind:
            raise ValueError(f"a {drawer.kind} drawer cannot claim as {req.kind}")
        async with self._tx("claim_slots") as conn:
            now = await store_now(conn)
            async with conn.execute(
                "SELECT lane, tat FROM rate_budget WHERE budget_key = ? AND lane IN (?, ?)",
                (budget_key, ALL, req.kind),
            ) as cursor:
                tats = {str(row[0]): float(row[1]) for row in await cursor.fetchall()}
            booking = book(now, tats.get(ALL), tats.get(req.kind), req)
            await conn.executemany(LANE_UPSERT, [
                (budget_key, ALL, booking.tat, req.rate_per_s, now),
                (budget_key, req.kind, booking.lane_tat, req.rate_per_s, now)])
            booked = len(booking.slots)
            await conn.execute(DRAWER_UPSERT, (
                budget_key, drawer.drawer_id, drawer.kind, drawer.pid, drawer.host, now, now,
                booked, now, booked, booked_until(booking, req, now), RATE_WINDOW_S,
                RATE_WINDOW_S, RATE_WINDOW_S))
            await conn.execute(
                "DELETE FROM rate_budget_drawer WHERE budget_key = ? AND last_claim_at < ?",
                (budget_key, now - FORGET_DRAWER_S))
        return booking

    async def leave_budget(self, budget_key: str, drawer_id: str) -> None:
        """Forget a drawer (its process stops drawing)."""
        async with self._tx("leave_budget") as conn:
            await conn.execute(
                "DELETE FROM rate_budget_drawer WHERE budget_key = ? AND drawer_id = ?",
                (budget_key, drawer_id))

    async def budgets_in_use(self) -> list[BudgetUse]:
        """Every budget with its ceiling, the rate booked now and the processes drawing (those
        that booked within `DRAWING_WITHIN_S`), busiest drawer first."""
        async with self._read("budgets_in_use") as conn:
            now = await store_now(conn)
            async with conn.execute(
                "SELECT budget_key, rate_per_s FROM rate_budget WHERE lane = ? "
                "ORDER BY budget_key", (ALL,)
            ) as cursor:
                ceilings = [(str(r[0]), float(r[1])) for r in await cursor.fetchall()]
            async with conn.execute(
                "SELECT budget_key, drawer_id, kind, pid, host, joined_at, last_claim_at, "
                "slots_total, window_start, window_slots, last_rate_per_s, booked_until "
                "FROM rate_budget_drawer WHERE last_claim_at >= ?", (now - DRAWING_WITHIN_S,)
            ) as cursor:
                rows = await cursor.fetchall()
        out = []
        for key, ceiling in ceilings:
            drawers = sorted(
                (Drawer(str(r[1]), r[2], int(r[3]), str(r[4]), float(r[5]), float(r[6]),
                        int(r[7]), drawer_rate((*r[8:12], r[5]), now))
                 for r in rows if r[0] == key),
                key=lambda d: (-d.rate_per_s, d.drawer_id))
            out.append(BudgetUse(key, ceiling, sum(d.rate_per_s for d in drawers),
                                 tuple(drawers)))
        return out
