"""Owed reconciliations per object and replay anchors per CDC channel, as typed rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import StoreBase
from .types import ChannelAnchor, PendingReconcile

PENDING_COLUMNS = "object_name, since_ms, trigger, seq"
SELECT_PENDING = f"SELECT {PENDING_COLUMNS} FROM reconcile_pending WHERE object_name = ?"


def _pending(row: Sequence[Any]) -> PendingReconcile:
    since = row[1]
    return PendingReconcile(None if since is None else int(since), str(row[2]), int(row[3]))


class ScheduleOps(StoreBase):
    """`reconcile_pending` (one row per object owing a reconciliation) and `channel_anchor`."""

    async def set_reconcile_pending(self, object_name: str, since_ms: int | None, trigger: str,
                                    now: float) -> PendingReconcile:
        """Durably owe a reconciliation of `object_name` from `since_ms` (None: every record),
        merged in the same transaction with one already owed; returns what is now owed."""
        wanted = PendingReconcile(since_ms, trigger, 1)
        async with self._tx("set_reconcile_pending") as conn:
            async with conn.execute(SELECT_PENDING, (object_name,)) as cursor:
                row = await cursor.fetchone()
            owed = wanted if row is None else _pending(row).merge(wanted)
            await conn.execute(
                "INSERT INTO reconcile_pending (object_name, since_ms, trigger, seq, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (object_name) DO UPDATE SET "
                "since_ms = excluded.since_ms, trigger = excluded.trigger, seq = excluded.seq, "
                "updated_at = excluded.updated_at",
                (object_name, owed.since_ms, owed.trigger, owed.seq, now),
            )
        return owed

    async def reconcile_pending(self, object_name: str) -> PendingReconcile | None:
        """The reconciliation `object_name` owes, if any."""
        async with self._read("reconcile_pending") as conn:
            async with conn.execute(SELECT_PENDING, (object_name,)) as cursor:
                row = await cursor.fetchone()
        return None if row is None else _pending(row)

    async def reconciles_pending(self) -> dict[str, PendingReconcile]:
        """Every owed reconciliation, by object."""
        async with self._read("reconciles_pending") as conn:
            async with conn.execute(
                f"SELECT {PENDING_COLUMNS} FROM reconcile_pending ORDER BY object_name"
            ) as cursor:
                rows = await cursor.fetchall()
        return {str(row[0]): _pending(row) for row in rows}

    async def clear_reconcile_pending(self, object_name: str, done: PendingReconcile) -> bool:
        """Drop the owed reconciliation if it is still exactly `done` (one scheduled meanwhile
        is kept for another pass); True when it was dropped."""
        async with self._tx("clear_reconcile_pending") as conn:
            cursor = await conn.execute(
                "DELETE FROM reconcile_pending WHERE object_name = ? AND since_ms IS ? "
                "AND trigger = ? AND seq = ?",
                (object_name, done.since_ms, done.trigger, done.seq),
            )
            return cursor.rowcount > 0

    async def channel_anchor(self, channel: str) -> ChannelAnchor | None:
        """The channel's anchor; None when it was never subscribed."""
        async with self._read("channel_anchor") as conn:
            async with conn.execute(
                "SELECT state, since_ms FROM channel_anchor WHERE channel = ?", (channel,)
            ) as cursor:
                row = await cursor.fetchone()
        if row is None:
            return None
        state = str(row[0])
        since = None if row[1] is None else int(row[1])
        if state == "earliest":
            return ChannelAnchor("earliest", since)
        if state == "unanchored":
            return ChannelAnchor("unanchored", since)
        return ChannelAnchor("anchored", since)

    async def set_channel_anchor(self, channel: str, anchor: ChannelAnchor, now: float) -> None:
        """Store the channel's anchor."""
        async with self._tx("set_channel_anchor") as conn:
            await conn.execute(
                "INSERT INTO channel_anchor (channel, state, since_ms, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (channel) DO UPDATE SET state = excluded.state, "
                "since_ms = excluded.since_ms, updated_at = excluded.updated_at",
                (channel, anchor.state, anchor.since_ms, now),
            )
