"""Worker registry and per-channel leadership leases with fencing tokens (docs/design.md §1.8).

Every `streamsync run` registers in `worker` and heartbeats. Each CDC channel has one
`channel_lease` row: a worker subscribes to a channel only while it holds the lease, and every
replay-id or anchor write of the channel names the lease's `token`. The token grows on every
acquisition, and the write checks it inside its own transaction (SQLite: under BEGIN IMMEDIATE,
which excludes every other writer), so a deposed leader's write is refused by the store itself
(`LeadershipLost`) and rolls back with the record ids it carried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiosqlite

from streamsync.errors import LeadershipLost
from streamsync.models import EventCandidate

from .base import StoreBase
from .events import insert_events
from .queue import UPSERT_SQL, _upsert_rows
from .replay import REPLAY_UPSERT_SQL, check_replay_id
from .types import ChannelAnchor, ChannelLease, LeaseGrant, QueueInput, WorkerInfo

WORKER_COLUMNS = "worker_id, host, pid, started_at, heartbeat_at, stopped_at"
LEASE_COLUMNS = "channel, holder, token, acquired_at, expires_at, failovers"


def _worker(row: Sequence[Any]) -> WorkerInfo:
    return WorkerInfo(str(row[0]), str(row[1]), int(row[2]), float(row[3]), float(row[4]),
                      None if row[5] is None else float(row[5]))


def _lease(row: Sequence[Any]) -> ChannelLease:
    return ChannelLease(str(row[0]), None if row[1] is None else str(row[1]), int(row[2]),
                        float(row[3]), float(row[4]), int(row[5]))


async def check_fence(conn: aiosqlite.Connection, channel: str, token: int) -> None:
    """Inside a write transaction: raise LeadershipLost unless `token` is the channel's."""
    async with conn.execute("SELECT token FROM channel_lease WHERE channel = ?",
                            (channel,)) as cursor:
        row = await cursor.fetchone()
    current = None if row is None else int(row[0])
    if current != token:
        raise LeadershipLost(channel, token, current)


class WorkerOps(StoreBase):
    """The `worker` and `channel_lease` tables, and the fenced writes of a channel's leader."""

    async def register_worker(self, worker: WorkerInfo) -> None:
        """Add (or re-add) a worker to the registry."""
        async with self._tx("register_worker") as conn:
            await conn.execute(
                f"INSERT INTO worker ({WORKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL) "
                "ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
                " heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
                (worker.worker_id, worker.host, worker.pid, worker.started_at,
                 worker.heartbeat_at))

    async def heartbeat(self, worker_id: str, now: float) -> bool:
        """Refresh a worker's heartbeat; False when its row is gone (register again)."""
        async with self._tx("heartbeat") as conn:
            cursor = await conn.execute(
                "UPDATE worker SET heartbeat_at = ? WHERE worker_id = ? AND stopped_at IS NULL",
                (now, worker_id))
            return cursor.rowcount > 0

    async def worker_stopped(self, worker_id: str, now: float) -> None:
        """A clean stop: the worker is marked stopped and every lease it holds is released."""
        async with self._tx("worker_stopped") as conn:
            await conn.execute("UPDATE worker SET stopped_at = ?, heartbeat_at = ? "
                               "WHERE worker_id = ?", (now, now, worker_id))
            await conn.execute("UPDATE channel_lease SET holder = NULL, expires_at = ? "
                               "WHERE holder = ?", (now, worker_id))

    async def workers(self) -> list[WorkerInfo]:
        """Every registered worker, most recent heartbeat first."""
        async with self._read("workers") as conn:
            async with conn.execute(
                f"SELECT {WORKER_COLUMNS} FROM worker ORDER BY heartbeat_at DESC, worker_id"
            ) as cursor:
                rows = await cursor.fetchall()
        return [_worker(row) for row in rows]

    async def forget_workers(self, stopped_before: float) -> int:
        """Drop registry rows of workers stopped (or silent) since before `stopped_before`."""
        async with self._tx("forget_workers") as conn:
            cursor = await conn.execute(
                "DELETE FROM worker WHERE coalesce(stopped_at, heartbeat_at) < ? AND NOT EXISTS"
                " (SELECT 1 FROM channel_lease WHERE holder = worker.worker_id)",
                (stopped_before,))
            return max(cursor.rowcount, 0)

    async def reclaim_leases_of_gone_workers(self, now: float, stale_after_s: float) -> int:
        """End the queue leases of workers stopped or silent for `stale_after_s` (their rows
        are due at once, as `expire_leases` does for a single owner's restart); returns how
        many. The flusher's lease owner is its worker id."""
        async with self._tx("reclaim_leases_of_gone_workers") as conn:
            cursor = await conn.execute(
                "UPDATE queue SET lease_expires_at = ?1, next_attempt_at = ?1 "
                "WHERE lease_token IS NOT NULL AND lease_expires_at > ?1 AND lease_owner IN "
                "(SELECT worker_id FROM worker WHERE stopped_at IS NOT NULL "
                "OR heartbeat_at < ?2)", (now, now - stale_after_s))
            return max(cursor.rowcount, 0)

    async def channel_leases(self) -> list[ChannelLease]:
        """Every channel's lease row, by channel."""
        async with self._read("channel_leases") as conn:
            async with conn.execute(
                f"SELECT {LEASE_COLUMNS} FROM channel_lease ORDER BY channel"
            ) as cursor:
                rows = await cursor.fetchall()
        return [_lease(row) for row in rows]

    async def acquire_channel(self, channel: str, worker_id: str, ttl_s: float, now: float,
                              *, take_over: bool = False) -> LeaseGrant | None:
        """Take the channel's lease if it is free (never held, released or expired), with a new
        token; None while another worker holds it. `take_over` takes it even then: only for
        a worker that knows no other is alive (SQLite's single owner, store/owner.py)."""
        if ttl_s <= 0:
            raise ValueError("a channel lease needs ttl_s > 0")
        expires = now + ttl_s
        async with self._tx("acquire_channel") as conn:
            async with conn.execute(f"SELECT {LEASE_COLUMNS} FROM channel_lease "
                                    "WHERE channel = ?", (channel,)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                await conn.execute(
                    f"INSERT INTO channel_lease ({LEASE_COLUMNS}) VALUES (?, ?, 1, ?, ?, 0)",
                    (channel, worker_id, now, expires))
                return LeaseGrant(channel, 1, expires)
            lease = _lease(row)
            live = lease.held_by(now)
            if live is not None and not take_over:
                return None
            previous = lease.holder if lease.holder not in (None, worker_id) else None
            await conn.execute(
                "UPDATE channel_lease SET holder = ?, token = token + 1, acquired_at = ?, "
                "expires_at = ?, failovers = failovers + ? WHERE channel = ?",
                (worker_id, now, expires, int(previous is not None), channel))
            return LeaseGrant(channel, lease.token + 1, expires, previous)

    async def renew_channel(self, channel: str, worker_id: str, token: int, ttl_s: float,
                            now: float) -> float | None:
        """Extend a lease still held with `token` (expired but not taken over counts as held);
        returns the new expiry, or None when the lease moved on."""
        expires = now + ttl_s
        async with self._tx("renew_channel") as conn:
            cursor = await conn.execute(
                "UPDATE channel_lease SET expires_at = ? "
                "WHERE channel = ? AND holder = ? AND token = ?",
                (expires, channel, worker_id, token))
            return expires if cursor.rowcount > 0 else None

    async def release_channel(self, channel: str, worker_id: str, token: int,
                              now: float) -> bool:
        """Give a lease up (the next acquirer need not wait for it to expire)."""
        async with self._tx("release_channel") as conn:
            cursor = await conn.execute(
                "UPDATE channel_lease SET holder = NULL, expires_at = ? "
                "WHERE channel = ? AND holder = ? AND token = ?",
                (now, channel, worker_id, token))
            return cursor.rowcount > 0

    async def fenced_record_event(self, channel: str, token: int, replay_id: str | int | None,
                                  items: Sequence[QueueInput], commit_ts_ms: int | None,
                                  now: float, events: Sequence[EventCandidate] = ()) -> None:
        """`record_event` for the channel's leader: refused (LeadershipLost, nothing committed)
        unless `token` is still the channel's."""
        check_replay_id(replay_id)
        rows = _upsert_rows(items, "cdc", commit_ts_ms, now)
        async with self._tx("record_event") as conn:
            await check_fence(conn, channel, token)
            if rows:
                await conn.executemany(UPSERT_SQL, rows)
            await insert_events(conn, events, now)
            await conn.execute(REPLAY_UPSERT_SQL, (channel, replay_id, commit_ts_ms, now))

    async def fenced_set_replay(self, channel: str, token: int, replay_id: str | int | None,
                                now: float) -> None:
        """`set_replay` (no commit time) for the channel's leader, fenced by `token`."""
        check_replay_id(replay_id)
        async with self._tx("set_replay") as conn:
            await check_fence(conn, channel, token)
            await conn.execute(
                "INSERT INTO replay (channel, replay_id, last_commit_ts_ms, updated_at) "
                "VALUES (?, ?, NULL, ?) ON CONFLICT (channel) DO UPDATE SET "
                "replay_id = excluded.replay_id, updated_at = excluded.updated_at",
                (channel, replay_id, now))

    async def fenced_set_channel_anchor(self, channel: str, token: int, anchor: ChannelAnchor,
                                        now: float) -> None:
        """`set_channel_anchor` for the channel's leader, fenced by `token`."""
        async with self._tx("set_channel_anchor") as conn:
            await check_fence(conn, channel, token)
            await conn.execute(
                "INSERT INTO channel_anchor (channel, state, since_ms, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (channel) DO UPDATE SET state = excluded.state, "
                "since_ms = excluded.since_ms, updated_at = excluded.updated_at",
                (channel, anchor.state, anchor.since_ms, now))
