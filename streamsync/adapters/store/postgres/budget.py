"""The shared Iterable rate budget on PostgreSQL (see streamsync/adapters/store/budget.py for
the semantics). Claims of one budget are serialised by a transaction-level advisory lock on
its key (the first claim has no row to lock yet), and times are the database server's clock,
the one clock every machine on the store shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ..budget import (
    DRAWING_WITHIN_S,
    FORGET_DRAWER_S,
    RATE_WINDOW_S,
    BudgetUse,
    Drawer,
    DrawerIdentity,
    booked_until,
    drawer_rate,
)
from ..budget_plan import ALL, Booking, ClaimRequest, book
from .base import Connection, PgBase

NOW_SQL: Final = "SELECT extract(epoch FROM clock_timestamp())::double precision"
DRAWER_UPSERT: Final = """
INSERT INTO rate_budget_drawer AS d (budget_key, drawer_id, kind, pid, host, joined_at,
                                     last_claim_at, slots_total, window_start, window_slots,
                                     booked_until)
VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $6, $7, $9)
ON CONFLICT (budget_key, drawer_id) DO UPDATE SET
    last_claim_at = excluded.last_claim_at,
    slots_total = d.slots_total + excluded.slots_total,
    booked_until = GREATEST(d.booked_until, excluded.booked_until),
    last_rate_per_s = CASE WHEN excluded.last_claim_at - d.window_start >= $8
        THEN d.window_slots / (GREATEST(d.booked_until, excluded.last_claim_at) - d.window_start)
        ELSE d.last_rate_per_s END,
    window_slots = CASE WHEN excluded.last_claim_at - d.window_start >= $8
        THEN excluded.window_slots ELSE d.window_slots + excluded.window_slots END,
    window_start = CASE WHEN excluded.last_claim_at - d.window_start >= $8
        THEN excluded.last_claim_at ELSE d.window_start END
"""
LANE_UPSERT: Final = """
INSERT INTO rate_budget (budget_key, lane, tat, rate_per_s, updated_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (budget_key, lane) DO UPDATE SET
    tat = excluded.tat, rate_per_s = excluded.rate_per_s, updated_at = excluded.updated_at
"""


async def store_now(conn: Connection) -> float:
    """The database server's clock, epoch seconds."""
    return float(await conn.fetchval(NOW_SQL))


class BudgetOps(PgBase):
    """`rate_budget` and `rate_budget_drawer` on PostgreSQL."""

    async def claim_slots(self, budget_key: str, drawer: DrawerIdentity,
                          req: ClaimRequest) -> Booking:
        if req.kind != drawer.kind:
            raise ValueError(f"a {drawer.kind} drawer cannot claim as {req.kind}")

        async def body(conn: Connection) -> Booking:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                               "rate_budget:" + budget_key)
            now = await store_now(conn)
            rows = await conn.fetch(
                "SELECT lane, tat FROM rate_budget WHERE budget_key = $1 AND lane IN ($2, $3)",
                budget_key, ALL, req.kind)
            tats = {str(r[0]): float(r[1]) for r in rows}
            booking = book(now, tats.get(ALL), tats.get(req.kind), req)
            await conn.executemany(LANE_UPSERT, [
                (budget_key, ALL, booking.tat, req.rate_per_s, now),
                (budget_key, req.kind, booking.lane_tat, req.rate_per_s, now)])
            await conn.execute(DRAWER_UPSERT, budget_key, drawer.drawer_id, drawer.kind,
                               drawer.pid, drawer.host, now, len(booking.slots), RATE_WINDOW_S,
                               booked_until(booking, req, now))
            await conn.execute(
                "DELETE FROM rate_budget_drawer WHERE budget_key = $1 AND last_claim_at < $2",
                budget_key, now - FORGET_DRAWER_S)
            return booking

        return await self._write("claim_slots", body)

    async def leave_budget(self, budget_key: str, drawer_id: str) -> None:
        async def body(conn: Connection) -> None:
            await conn.execute(
                "DELETE FROM rate_budget_drawer WHERE budget_key = $1 AND drawer_id = $2",
                budget_key, drawer_id)

        await self._write("leave_budget", body)

    async def budgets_in_use(self) -> list[BudgetUse]:
        async with self._read("budgets_in_use") as conn:
            now = await store_now(conn)
            ceilings = [(str(r[0]), float(r[1])) for r in await conn.fetch(
                "SELECT budget_key, rate_per_s FROM rate_budget WHERE lane = $1 "
                "ORDER BY budget_key", ALL)]
            rows: Sequence[Any] = await conn.fetch(
                "SELECT budget_key, drawer_id, kind, pid, host, joined_at, last_claim_at, "
                "slots_total, window_start, window_slots, last_rate_per_s, booked_until "
                "FROM rate_budget_drawer WHERE last_claim_at >= $1", now - DRAWING_WITHIN_S)
        out = []
        for key, ceiling in ceilings:
            drawers = sorted(
                (Drawer(str(r[1]), r[2], int(r[3]), str(r[4]), float(r[5]), float(r[6]),
                        int(r[7]), drawer_rate((*tuple(r[8:12]), r[5]), now))
                 for r in rows if r[0] == key),
                key=lambda d: (-d.rate_per_s, d.drawer_id))
            out.append(BudgetUse(key, ceiling, sum(d.rate_per_s for d in drawers),
                                 tuple(drawers)))
        return out
