"""Worker registry and per-channel leadership leases on PostgreSQL (see
streamsync/adapters/store/workers.py for the semantics).

The fence is a row lock: a fenced write reads the channel's lease row `FOR SHARE` inside its
own transaction, so an acquisition (an `UPDATE` of that row) waits for the write to commit,
and a write that starts after the acquisition committed sees the new token and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamsync.errors import LeadershipLost
from streamsync.models import EventCandidate

from ..replay import check_replay_id
from ..types import ChannelAnchor, ChannelLease, LeaseGrant, QueueInput, WorkerInfo
from ..workers import LEASE_COLUMNS, WORKER_COLUMNS
from .base import Connection, PgBase, rows_affected
from .events import insert_events
from .queue import upsert_queue
from .replay import upsert_replay


def _worker(row: Sequence[Any]) -> WorkerInfo:
    return WorkerInfo(str(row[0]), str(row[1]), int(row[2]), float(row[3]), float(row[4]),
                      None if row[5] is None else float(row[5]))


def _lease(row: Sequence[Any]) -> ChannelLease:
    return ChannelLease(str(row[0]), None if row[1] is None else str(row[1]), int(row[2]),
                        float(row[3]), float(row[4]), int(row[5]))


async def check_fence(conn: Connection, channel: str, token: int) -> None:
    """Inside a write transaction: raise LeadershipLost unless `token` is the channel's (the
    lease row stays share-locked until the transaction ends)."""
    current = await conn.fetchval(
        "SELECT token FROM channel_lease WHERE channel = $1 FOR SHARE", channel)
    if current is None or int(current) != token:
        raise LeadershipLost(channel, token, None if current is None else int(current))


class WorkerOps(PgBase):
    """The `worker` and `channel_lease` tables, and the fenced writes of a channel's leader."""

    async def register_worker(self, worker: WorkerInfo) -> None:
        """Add (or re-add) a worker to the registry."""

        async def body(conn: Connection) -> None:
            await conn.execute(
                f"INSERT INTO worker ({WORKER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, NULL) "
                "ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host, "
                "pid = excluded.pid, heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
                worker.worker_id, worker.host, worker.pid, worker.started_at,
                worker.heartbeat_at)

        await self._write("register_worker", body)

    async def heartbeat(self, worker_id: str, now: float) -> bool:
        """Refresh a worker's heartbeat; False when its row is gone (register again)."""

        async def body(conn: Connection) -> bool:
            status = await conn.execute(
                "UPDATE worker SET heartbeat_at = $1 WHERE worker_id = $2 "
                "AND stopped_at IS NULL", now, worker_id)
            return rows_affected(status) > 0

        return await self._write("heartbeat", body)

    async def worker_stopped(self, worker_id: str, now: float) -> None:
        """A clean stop: the worker is marked stopped and every lease it holds is released."""

        async def body(conn: Connection) -> None:
            await conn.execute("UPDATE worker SET stopped_at = $1, heartbeat_at = $1 "
                               "WHERE worker_id = $2", now, worker_id)
            await conn.execute("UPDATE channel_lease SET holder = NULL, expires_at = $1 "
                               "WHERE holder = $2", now, worker_id)

        await self._write("worker_stopped", body)

    async def workers(self) -> list[WorkerInfo]:
        """Every registered worker, most recent heartbeat first."""
        async with self._read("workers") as conn:
            rows = await conn.fetch(
                f"SELECT {WORKER_COLUMNS} FROM worker ORDER BY heartbeat_at DESC, worker_id")
        return [_worker(tuple(row)) for row in rows]

    async def forget_workers(self, stopped_before: float) -> int:
        """Drop registry rows of workers stopped (or silent) since before `stopped_before`."""

        async def body(conn: Connection) -> int:
            status = await conn.execute(
                "DELETE FROM worker WHERE coalesce(stopped_at, heartbeat_at) < $1 AND NOT EXISTS"
                " (SELECT 1 FROM channel_lease WHERE holder = worker.worker_id)", stopped_before)
            return rows_affected(status)

        return await self._write("forget_workers", body)

    async def reclaim_leases_of_gone_workers(self, now: float, stale_after_s: float) -> int:
        """End the queue leases of workers stopped or silent for `stale_after_s`."""

        async def body(conn: Connection) -> int:
            status = await conn.execute(
                "UPDATE queue SET lease_expires_at = $1, next_attempt_at = $1 "
                "WHERE lease_token IS NOT NULL AND lease_expires_at > $1 AND lease_owner IN "
                "(SELECT worker_id FROM worker WHERE stopped_at IS NOT NULL "
                "OR heartbeat_at < $2)", now, now - stale_after_s)
            return rows_affected(status)

        return await self._write("reclaim_leases_of_gone_workers", body)

    async def channel_leases(self) -> list[ChannelLease]:
        """Every channel's lease row, by channel."""
        async with self._read("channel_leases") as conn:
            rows = await conn.fetch(f"SELECT {LEASE_COLUMNS} FROM channel_lease ORDER BY channel")
        return [_lease(tuple(row)) for row in rows]

    async def acquire_channel(self, channel: str, worker_id: str, ttl_s: float, now: float,
                              *, take_over: bool = False) -> LeaseGrant | None:
        """Take the channel's lease if it is free, with a new token; None while another worker
        holds it (see the SQLite store's `acquire_channel`)."""
        if ttl_s <= 0:
            raise ValueError("a channel lease needs ttl_s > 0")
        expires = now + ttl_s

        async def body(conn: Connection) -> LeaseGrant | None:
            inserted = await conn.execute(
                f"INSERT INTO channel_lease ({LEASE_COLUMNS}) VALUES ($1, $2, 1, $3, $4, 0) "
                "ON CONFLICT (channel) DO NOTHING", channel, worker_id, now, expires)
            if rows_affected(inserted) > 0:
                return LeaseGrant(channel, 1, expires)
            row = await conn.fetchrow(
                f"SELECT {LEASE_COLUMNS} FROM channel_lease WHERE channel = $1 FOR UPDATE",
                channel)
            if row is None:
                return None
            lease = _lease(tuple(row))
            if lease.held_by(now) is not None and not take_over:
                return None
            previous = lease.holder if lease.holder not in (None, worker_id) else None
            await conn.execute(
                "UPDATE channel_lease SET holder = $1, token = token + 1, acquired_at = $2, "
                "expires_at = $3, failovers = failovers + $4 WHERE channel = $5",
                worker_id, now, expires, int(previous is not None), channel)
            return LeaseGrant(channel, lease.token + 1, expires, previous)

        return await self._write("acquire_channel", body)

    async def renew_channel(self, channel: str, worker_id: str, token: int, ttl_s: float,
                            now: float) -> float | None:
        """Extend a lease still held with `token`; the new expiry, or None when it moved on."""
        expires = now + ttl_s

        async def body(conn: Connection) -> float | None:
            status = await conn.execute(
                "UPDATE channel_lease SET expires_at = $1 "
                "WHERE channel = $2 AND holder = $3 AND token = $4",
                expires, channel, worker_id, token)
            return expires if rows_affected(status) > 0 else None

        return await self._write("renew_channel", body)

    async def release_channel(self, channel: str, worker_id: str, token: int,
                              now: float) -> bool:
        """Give a lease up (the next acquirer need not wait for it to expire)."""

        async def body(conn: Connection) -> bool:
            status = await conn.execute(
                "UPDATE channel_lease SET holder = NULL, expires_at = $1 "
                "WHERE channel = $2 AND holder = $3 AND token = $4",
                now, channel, worker_id, token)
            return rows_affected(status) > 0

        return await self._write("release_channel", body)

    async def fenced_record_event(self, channel: str, token: int, replay_id: str | int | None,
                                  items: Sequence[QueueInput], commit_ts_ms: int | None,
                                  now: float, events: Sequence[EventCandidate] = ()) -> None:
        """`record_event` for the channel's leader: refused (LeadershipLost, nothing committed)
        unless `token` is still the channel's."""
        check_replay_id(replay_id)

        async def body(conn: Connection) -> None:
            await check_fence(conn, channel, token)
            await upsert_queue(conn, items, "cdc", commit_ts_ms, now)
            await insert_events(conn, events, now)
            await upsert_replay(conn, channel, replay_id, commit_ts_ms, now, keep=True)

        await self._write("record_event", body)

    async def fenced_set_replay(self, channel: str, token: int, replay_id: str | int | None,
                                now: float) -> None:
        """`set_replay` (no commit time) for the channel's leader, fenced by `token`."""
        check_replay_id(replay_id)

        async def body(conn: Connection) -> None:
            await check_fence(conn, channel, token)
            await upsert_replay(conn, channel, replay_id, None, now, keep=False)

        await self._write("set_replay", body)

    async def fenced_set_channel_anchor(self, channel: str, token: int, anchor: ChannelAnchor,
                                        now: float) -> None:
        """`set_channel_anchor` for the channel's leader, fenced by `token`."""

        async def body(conn: Connection) -> None:
            await check_fence(conn, channel, token)
            await conn.execute(
                "INSERT INTO channel_anchor (channel, state, since_ms, updated_at) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (channel) DO UPDATE SET "
                "state = excluded.state, since_ms = excluded.since_ms, "
                "updated_at = excluded.updated_at", channel, anchor.state, anchor.since_ms, now)

        await self._write("set_channel_anchor", body)
