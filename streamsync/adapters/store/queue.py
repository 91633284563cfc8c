"""The durable work queue: coalescing enqueue, leases, ack by version, backoff, replay ids."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import aiosqlite

from streamsync.models import EventCandidate

from .base import clean_error
from .events import insert_events
from .replay import REPLAY_UPSERT_SQL, ReplayOps, check_replay_id
from .types import (
    LEASE_EXPIRED,
    RETRIES_EXHAUSTED,
    SOURCES,
    AckResult,
    Backoff,
    Failure,
    Lease,
    QueueInput,
    QueueStats,
    SettleResult,
)

# A new row is due now; an existing row gets version + 1 and keeps its place and its backoff.
# The earliest commit time is kept (min that ignores NULL). A change arriving while the row is
# leased is also remembered in requeued_*, which replace the row's age once the older version
# is acked.
UPSERT_SQL = """
INSERT INTO queue (object_name, record_id, change_type, source, first_enqueued_at,
                   last_enqueued_at, commit_ts_ms, next_attempt_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?5)
ON CONFLICT (object_name, record_id) DO UPDATE SET
    version = version + 1,
    change_type = excluded.change_type,
    source = excluded.source,
    last_enqueued_at = excluded.last_enqueued_at,
    commit_ts_ms = min(coalesce(commit_ts_ms, excluded.commit_ts_ms),
                       coalesce(excluded.commit_ts_ms, commit_ts_ms)),
    requeued_at = CASE WHEN lease_token IS NULL THEN NULL
                       ELSE coalesce(requeued_at, excluded.last_enqueued_at) END,
    requeued_commit_ts_ms = CASE WHEN lease_token IS NULL THEN NULL
        ELSE min(coalesce(requeued_commit_ts_ms, excluded.commit_ts_ms),
                 coalesce(excluded.commit_ts_ms, requeued_commit_ts_ms)) END
"""

CLEAR_LEASE = "lease_owner = NULL, lease_token = NULL, leased_at = NULL, lease_expires_at = NULL"

# The row now stands for the change(s) that arrived during the lease only.
NEWER_ONLY = f"""{CLEAR_LEASE}, attempts = 0, outage_retries = 0, last_error = NULL,
    commit_ts_ms = requeued_commit_ts_ms,
    first_enqueued_at = coalesce(requeued_at, first_enqueued_at),
    requeued_at = NULL, requeued_commit_ts_ms = NULL"""

KEY_TOKEN = "object_name = ? AND record_id = ? AND lease_token = ?"
KEY_VERSION_TOKEN = "object_name = ? AND record_id = ? AND version = ? AND lease_token = ?"

LEASE_COLUMNS = (
    "object_name, record_id, version, change_type, source, attempts, commit_ts_ms, "
    "first_enqueued_at, outage_retries"
)


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown queue source {source!r}; expected one of {sorted(SOURCES)}")


def _upsert_rows(
    items: Sequence[QueueInput], source: str, commit_ts_ms: int | None, now: float
) -> list[tuple[object, ...]]:
    return [
        (item.object_name, item.record_id, item.change_type, source, now, commit_ts_ms)
        for item in items
    ]


async def _dead_letter_rows(
    conn: aiosqlite.Connection, failures: Sequence[tuple[Lease, str, str, int]], now: float
) -> tuple[int, int]:
    """Move leased rows to dead_letter when version and token still match.

    Returns (dead-lettered, kept because a newer change arrived): a kept row loses its lease,
    starts over with attempts 0 and is due now.
    """
    if not failures:
        return 0, 0
    await conn.executemany(
        f"""
        INSERT INTO dead_letter (object_name, record_id, change_type, reason, last_error,
                                 attempts, first_failed_at, last_failed_at)
        SELECT object_name, record_id, change_type, ?, ?, ?, ?, ? FROM queue
        WHERE {KEY_VERSION_TOKEN}
        ON CONFLICT (object_name, record_id) DO UPDATE SET
            change_type = excluded.change_type, reason = excluded.reason,
            last_error = excluded.last_error, attempts = excluded.attempts,
            last_failed_at = excluded.last_failed_at
        """,
        [
            (reason, clean_error(error), attempts, now, now, *_key_version_token(lease))
            for lease, reason, error, attempts in failures
        ],
    )
    cursor = await conn.executemany(
        f"DELETE FROM queue WHERE {KEY_VERSION_TOKEN}",
        [_key_version_token(lease) for lease, _r, _e, _a in failures],
    )
    dead = max(cursor.rowcount, 0)
    cursor = await conn.executemany(
        f"UPDATE queue SET {NEWER_ONLY}, next_attempt_at = ? WHERE {KEY_TOKEN}",
        [(now, *_key_token(lease)) for lease, _r, _e, _a in failures],
    )
    return dead, max(cursor.rowcount, 0)


def _key_token(lease: Lease) -> tuple[str, str, str]:
    return (lease.object_name, lease.record_id, lease.token)


def _key_version_token(lease: Lease) -> tuple[str, str, int, str]:
    return (lease.object_name, lease.record_id, lease.version, lease.token)


class QueueOps(ReplayOps):
    """Queue and replay-id operations; all times are passed in (epoch seconds)."""

    async def record_event(
        self,
        channel: str,
        replay_id: str | int | None,
        items: Sequence[QueueInput],
        commit_ts_ms: int | None,
        now: float,
        events: Sequence[EventCandidate] = (),
    ) -> None:
        """Enqueue the ids of one CDC event and store the channel's replay id, atomically;
        with the event-rule candidates of the change (docs/events.md §4).

        When this returns, all are committed; if it raises, none is
        (docs/design.md invariant 1).
        """
        check_replay_id(replay_id)
        rows = _upsert_rows(items, "cdc", commit_ts_ms, now)
        async with self._tx("record_event") as conn:
            if rows:
                await conn.executemany(UPSERT_SQL, rows)
            await insert_events(conn, events, now)
            await conn.execute(REPLAY_UPSERT_SQL, (channel, replay_id, commit_ts_ms, now))

    async def enqueue(
        self,
        items: Sequence[QueueInput],
        now: float,
        source: str,
        commit_ts_ms: int | None = None,
    ) -> int:
        """Enqueue records without a replay id (reconcile, fan-out, catch-up, retry)."""
        _check_source(source)
        if not items:
            return 0
        rows = _upsert_rows(items, source, commit_ts_ms, now)
        async with self._tx("enqueue") as conn:
            await conn.executemany(UPSERT_SQL, rows)
        return len(rows)

    async def lease(
        self,
        owner: str,
        limit: int,
        lease_s: float,
        now: float,
        objects: Sequence[str] | None = None,
        max_attempts: int | None = None,
    ) -> list[Lease]:
        """Lease up to `limit` due rows, oldest first, until `now + lease_s`.

        Due means `next_attempt_at <= now`: new rows, rows whose backoff ended, and rows whose
        lease expired (their holder crashed or hung). An expired lease counts as a failed
        attempt; with `max_attempts` (pass `Backoff.max_attempts`), a row that reaches it that
        way is dead-lettered as `lease_expired` instead of being handed out again, so a record
        that crashes its flusher every time cannot stall the queue in a crash loop.
        """
        if limit <= 0 or (objects is not None and not objects):
            return []
        token = f"{owner}/{secrets.token_hex(6)}"
        expires = now + lease_s
        where = "next_attempt_at <= ?"
        params: list[object] = [owner, token, now, expires, expires, now]
        if objects is not None:
            where += f" AND object_name IN ({', '.join('?' for _ in objects)})"
            params.extend(objects)
        params.append(int(limit))
        sql = f"""
            UPDATE queue SET lease_owner = ?, lease_token = ?, leased_at = ?,
                lease_expires_at = ?, next_attempt_at = ?,
                attempts = attempts + (lease_token IS NOT NULL),
                requeued_at = NULL, requeued_commit_ts_ms = NULL
            WHERE rowid IN (SELECT rowid FROM queue WHERE {where}
                            ORDER BY next_attempt_at LIMIT ?)
            RETURNING {LEASE_COLUMNS}
        """
        async with self._tx("lease") as conn:
            async with conn.execute(sql, params) as cursor:
                rows = await cursor.fetchall()
            leases = [
                Lease(
                    object_name=row[0],
                    record_id=row[1],
                    version=row[2],
                    change_type=row[3],
                    source=row[4],
                    attempts=row[5],
                    commit_ts_ms=row[6],
                    first_enqueued_at=row[7],
                    token=token,
                    lease_expires_at=expires,
                    outage_retries=row[8],
                )
                for row in rows
            ]
            if max_attempts is not None:
                crashed = [lease for lease in leases if lease.attempts >= max_attempts]
                if crashed:
                    await _dead_letter_rows(
                        conn,
                        [
                            (
                                lease,
                                LEASE_EXPIRED,
                                f"attempt {lease.attempts} ended in an expired lease, without "
                                "ack, retry or release (a flusher crashed or hung on it)",
                                lease.attempts,
                            )
                            for lease in crashed
                        ],
                        now,
                    )
                    leases = [lease for lease in leases if lease.attempts < max_attempts]
        leases.sort(key=lambda lease: (lease.first_enqueued_at, lease.object_name, lease.record_id))
        return leases

    async def ack(self, leases: Sequence[Lease]) -> AckResult:
        """The sink confirmed these: delete each row whose version is still the leased one.

        A row re-enqueued meanwhile stays (its lease cleared, due at once) so the newer change
        is synced too (docs/design.md invariant 2). Only the current lease holder settles a row:
        after a lease expired and the row was leased again, the old lease is ignored (the new
        holder writes the record again), and it can never touch a row that was deleted and
        queued anew, whose version counts from 1 again (docs/design.md invariant 10).

        A record that syncs is no longer poison: an older dead letter of it is removed, so the
        dead-letter table lists only records that are still bad.
        """
        keys = list({_key_token(lease): lease.version for lease in leases}.items())
        if not keys:
            return AckResult(0, 0)
        async with self._tx("ack") as conn:
            cleared = 0
            async with conn.execute("SELECT EXISTS (SELECT 1 FROM dead_letter)") as cursor:
                any_dead = await cursor.fetchone()
            if any_dead and any_dead[0]:  # else there is nothing to clear: no statement per row
                cursor = await conn.executemany(
                    "DELETE FROM dead_letter WHERE object_name = ?1 AND record_id = ?2 AND EXISTS "
                    "(SELECT 1 FROM queue WHERE object_name = ?1 AND record_id = ?2 "
                    "AND lease_token = ?3)", [key for key, _ in keys])
                cleared = max(cursor.rowcount, 0)
            cursor = await conn.executemany(
                f"DELETE FROM queue WHERE {KEY_VERSION_TOKEN}",
                [(key[0], key[1], version, key[2]) for key, version in keys])
            deleted = max(cursor.rowcount, 0)
            kept = 0
            if deleted < len(keys):  # a row is left only where a newer change arrived
                cursor = await conn.executemany(
                    f"UPDATE queue SET {NEWER_ONLY}, next_attempt_at = coalesce(leased_at, "
                    f"next_attempt_at) WHERE {KEY_TOKEN}", [key for key, _ in keys])
                kept = max(cursor.rowcount, 0)
        return AckResult(deleted=deleted, kept=kept, dead_letters_cleared=cleared)

    async def retry_later(
        self,
        leases: Sequence[Lease],
        error: str,
        now: float,
        backoff: Backoff,
        retry_after_s: float | None = None,
    ) -> SettleResult:
        """A transient failure: attempts + 1 and a jittered backoff (at least `retry_after_s`).

        Rows that reach `backoff.max_attempts` are dead-lettered as `retries_exhausted` (unless a
        newer change arrived, which then starts over).
        """
        if not leases:
            return SettleResult()
        error = clean_error(error)
        exhausted = [
            (lease, RETRIES_EXHAUSTED, error, lease.attempts + 1)
            for lease in leases
            if lease.attempts + 1 >= backoff.max_attempts
        ]
        later = [
            (
                lease.attempts + 1,
                now + backoff.delay_s(lease.attempts + 1, retry_after_s),
                error,
                *_key_token(lease),
            )
            for lease in leases
            if lease.attempts + 1 < backoff.max_attempts
        ]
        async with self._tx("retry_later") as conn:
            retried = 0
            if later:
                cursor = await conn.executemany(
                    f"""UPDATE queue SET {CLEAR_LEASE}, attempts = ?, next_attempt_at = ?,
                        last_error = ?, requeued_at = NULL, requeued_commit_ts_ms = NULL
                        WHERE {KEY_TOKEN}""",
                    later,
                )
                retried = max(cursor.rowcount, 0)
            dead, kept = await _dead_letter_rows(conn, exhausted, now)
        return SettleResult(
            retried=retried,
            dead_lettered=dead,
            kept_newer=kept,
            stale=len(leases) - retried - dead - kept,
        )

    async def wait_out(
        self,
        leases: Sequence[Lease],
        error: str,
        now: float,
        backoff: Backoff,
        retry_after_s: float | None = None,
        until: float | None = None,
    ) -> SettleResult:
        """Salesforce or Iterable failed, not the records: `attempts` stay as they are (an
        outage never dead-letters), `outage_retries` + 1. The row is due at `until` (the next
        probe of an open circuit breaker, at least `retry_after_s` away) or else after a
        jittered backoff by its outage retries; `resume_waiting` makes it due at once."""
        if not leases:
            return SettleResult()
        error = clean_error(error)
        rows = []
        for lease in leases:
            if until is not None:
                due = max(until, now + (retry_after_s or 0.0))
            else:
                due = now + backoff.delay_s(lease.outage_retries + 1, retry_after_s)
            rows.append((due, error, *_key_token(lease)))
        async with self._tx("wait_out") as conn:
            cursor = await conn.executemany(
                f"""UPDATE queue SET {CLEAR_LEASE}, outage_retries = outage_retries + 1,
                    next_attempt_at = ?, last_error = ?, requeued_at = NULL,
                    requeued_commit_ts_ms = NULL WHERE {KEY_TOKEN}""",
                rows,
            )
            retried = max(cursor.rowcount, 0)
        return SettleResult(retried=retried, stale=len(leases) - retried)

    async def resume_waiting(self, now: float) -> int:
        """An outage ended: every unleased row that was waiting it out is due now (its outage
        retries start over); returns how many."""
        async with self._tx("resume_waiting") as conn:
            cursor = await conn.execute(
                """UPDATE queue SET outage_retries = 0,
                       next_attempt_at = min(next_attempt_at, ?1)
                   WHERE outage_retries > 0 AND lease_token IS NULL""",
                (now,),
            )
            return max(cursor.rowcount, 0)

    async def dead_letter(
        self, leases: Sequence[Lease], reason: str, error: str, now: float
    ) -> SettleResult:
        """Poison records: move each to the dead-letter table if its version is unchanged.

        A row whose record changed meanwhile stays queued and is retried from scratch instead.
        """
        return await self.dead_letter_each([Failure(lease, reason, error) for lease in leases], now)

    async def dead_letter_each(self, failures: Sequence[Failure], now: float) -> SettleResult:
        """Like `dead_letter`, with a reason and error per record (per-user failures of a reply)."""
        if not failures:
            return SettleResult()
        rows = [(f.lease, f.reason, f.error, f.lease.attempts + 1) for f in failures]
        async with self._tx("dead_letter") as conn:
            dead, kept = await _dead_letter_rows(conn, rows, now)
        return SettleResult(dead_lettered=dead, kept_newer=kept, stale=len(rows) - dead - kept)

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give leases back without penalty (shutdown); the rows are due again at once."""
        if not leases:
            return 0
        async with self._tx("release") as conn:
            cursor = await conn.executemany(
                f"""UPDATE queue SET {CLEAR_LEASE},
                    next_attempt_at = coalesce(leased_at, next_attempt_at),
                    requeued_at = NULL, requeued_commit_ts_ms = NULL WHERE {KEY_TOKEN}""",
                [_key_token(lease) for lease in leases],
            )
            return max(cursor.rowcount, 0)

    async def expire_leases(self, now: float) -> int:
        """End every live lease now (their rows are due at once); returns how many.

        Only for a new owner of the store (see `owner.StoreOwnership`): any lease left is a
        dead process's. The expiry still counts as an attempt at the next lease, exactly as if
        the lease had run out, so a record that kills its process each time still ends as
        `lease_expired` instead of crash-looping the service."""
        async with self._tx("expire_leases") as conn:
            cursor = await conn.execute(
                "UPDATE queue SET lease_expires_at = ?1, next_attempt_at = ?1 "
                "WHERE lease_token IS NOT NULL AND lease_expires_at > ?1", (now,))
            return max(cursor.rowcount, 0)

    async def queue_stats(self, now: float) -> QueueStats:
        """Depth, rows due now, rows under a live lease, rows in backoff, oldest row's age."""
        async with self._read("queue_stats") as conn:
            async with conn.execute(
                """
                SELECT count(*),
                       coalesce(sum(next_attempt_at <= ?1), 0),
                       coalesce(sum(lease_expires_at > ?1), 0),
                       coalesce(sum((attempts > 0 OR outage_retries > 0)
                                    AND next_attempt_at > ?1 AND lease_token IS NULL), 0),
                       min(first_enqueued_at)
                FROM queue
                """,
                (now,),
            ) as cursor:
                row = await cursor.fetchone()
        assert row is not None
        oldest = None if row[4] is None else max(0.0, now - float(row[4]))
        return QueueStats(
            depth=int(row[0]),
            due=int(row[1]),
            leased=int(row[2]),
            retrying=int(row[3]),
            oldest_age_s=oldest,
        )

    async def queue_depth_by_object(self) -> dict[str, int]:
        """Rows per Salesforce object, for the queue-depth gauge."""
        async with self._read("queue_depth_by_object") as conn:
            async with conn.execute(
                "SELECT object_name, count(*) FROM queue GROUP BY object_name"
            ) as cursor:
                return {str(name): int(count) for name, count in await cursor.fetchall()}

    async def leased_elsewhere(self, object_name: str, owner: str, now: float) -> int:
        """Rows of `object_name` under a live lease (`lease_expires_at > now`) whose owner is
        not `owner`: another worker's flush of them may still write (runtime/resync_holds.py)."""
        async with self._read("leased_elsewhere") as conn:
            async with conn.execute(
                "SELECT count(*) FROM queue WHERE object_name = ? AND lease_token IS NOT NULL "
                "AND lease_expires_at > ? AND lease_owner IS NOT ?",
                (object_name, now, owner),
            ) as cursor:
                row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    async def next_due(self, objects: Sequence[str] | None = None) -> float | None:
        """The earliest `next_attempt_at` of a row of `objects` (None: any object), leased rows
        included (due at their lease's end): when `lease` will next find work without a new
        enqueue. None for an empty queue."""
        where = ""
        params: list[object] = []
        if objects is not None:
            if not objects:
                return None
            where = f"WHERE object_name IN ({', '.join('?' for _ in objects)})"
            params.extend(objects)
        async with self._read("next_due") as conn:
            async with conn.execute(
                f"SELECT next_attempt_at FROM queue {where} ORDER BY next_attempt_at LIMIT 1",
                params,
            ) as cursor:
                row = await cursor.fetchone()
        return None if row is None else float(row[0])
