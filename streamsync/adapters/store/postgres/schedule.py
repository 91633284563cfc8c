"""Owed reconciliations and channel anchors on PostgreSQL (see
streamsync/adapters/store/schedule.py)."""

from __future__ import annotations

from ..schedule import PENDING_COLUMNS, _pending
from ..types import ChannelAnchor, PendingReconcile
from .base import Connection, PgBase, rows_affected

# Two processes owing a reconciliation of the same object at once must merge, not overwrite:
# the read-merge-write runs under a transaction-level advisory lock per object.
PENDING_LOCK = 0x5253_504E  # "RSPN"


class ScheduleOps(PgBase):
    """`reconcile_pending` (one row per object owing a reconciliation) and `channel_anchor`."""

    async def set_reconcile_pending(self, object_name: str, since_ms: int | None, trigger: str,
                                    now: float) -> PendingReconcile:
        """Durably owe a reconciliation of `object_name` from `since_ms` (None: every record),
        merged in the same transaction with one already owed; returns what is now owed."""
        wanted = PendingReconcile(since_ms, trigger, 1)

        async def body(conn: Connection) -> PendingReconcile:
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", PENDING_LOCK,
                               object_name)
            row = await conn.fetchrow(
                f"SELECT {PENDING_COLUMNS} FROM reconcile_pending WHERE object_name = $1",
                object_name)
            owed = wanted if row is None else _pending(tuple(row)).merge(wanted)
            await conn.execute(
                "INSERT INTO reconcile_pending (object_name, since_ms, trigger, seq, updated_at)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (object_name) DO UPDATE SET "
                "since_ms = excluded.since_ms, trigger = excluded.trigger, seq = excluded.seq, "
                "updated_at = excluded.updated_at",
                object_name, owed.since_ms, owed.trigger, owed.seq, now)
            return owed

        return await self._write("set_reconcile_pending", body)

    async def reconcile_pending(self, object_name: str) -> PendingReconcile | None:
        """The reconciliation `object_name` owes, if any."""
        async with self._read("reconcile_pending") as conn:
            row = await conn.fetchrow(
                f"SELECT {PENDING_COLUMNS} FROM reconcile_pending WHERE object_name = $1",
                object_name)
        return None if row is None else _pending(tuple(row))

    async def reconciles_pending(self) -> dict[str, PendingReconcile]:
        """Every owed reconciliation, by object."""
        async with self._read("reconciles_pending") as conn:
            rows = await conn.fetch(
                f'SELECT {PENDING_COLUMNS} FROM reconcile_pending ORDER BY object_name COLLATE "C"')
        return {str(row[0]): _pending(tuple(row)) for row in rows}

    async def clear_reconcile_pending(self, object_name: str, done: PendingReconcile) -> bool:
        """Drop the owed reconciliation if it is still exactly `done`; True when dropped."""

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                "DELETE FROM reconcile_pending WHERE object_name = $1 AND since_ms IS NOT "
                "DISTINCT FROM $2 AND trigger = $3 AND seq = $4",
                object_name, done.since_ms, done.trigger, done.seq))

        return await self._write("clear_reconcile_pending", body) > 0

    async def channel_anchor(self, channel: str) -> ChannelAnchor | None:
        """The channel's anchor; None when it was never subscribed."""
        async with self._read("channel_anchor") as conn:
            row = await conn.fetchrow(
                "SELECT state, since_ms FROM channel_anchor WHERE channel = $1", channel)
        if row is None:
            return None
        since = None if row[1] is None else int(row[1])
        state = str(row[0])
        if state == "earliest":
            return ChannelAnchor("earliest", since)
        if state == "unanchored":
            return ChannelAnchor("unanchored", since)
        return ChannelAnchor("anchored", since)

    async def set_channel_anchor(self, channel: str, anchor: ChannelAnchor, now: float) -> None:
        """Store the channel's anchor."""

        async def body(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO channel_anchor (channel, state, since_ms, updated_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (channel) DO UPDATE SET "
                "state = excluded.state, since_ms = excluded.since_ms, "
                "updated_at = excluded.updated_at", channel, anchor.state, anchor.since_ms, now)

        await self._write("set_channel_anchor", body)
