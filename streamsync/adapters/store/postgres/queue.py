"""The queue on PostgreSQL: the same semantics as streamsync/adapters/store/queue.py.

Batches travel as arrays (`unnest`), one statement per step instead of one per row. Rows are
always touched in key order, so two transactions never wait on each other in a cycle; `lease`
takes its rows `FOR UPDATE SKIP LOCKED`, so concurrent flushers in any number of processes
lease disjoint rows without waiting.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from streamsync.models import EventCandidate

from ..base import clean_error
from ..queue import _check_source
from ..replay import check_replay_id
from ..types import (
    LEASE_EXPIRED,
    RETRIES_EXHAUSTED,
    AckResult,
    Backoff,
    Failure,
    Lease,
    QueueInput,
    QueueStats,
    SettleResult,
)
from .base import Connection, PgBase, rows_affected
from .events import insert_events
from .replay import ReplayOps, upsert_replay

# `n` duplicates of one key in a batch count as n enqueues (version + n), as n single upserts
# would; LEAST ignores NULLs as the SQLite min(coalesce(...)) does.
UPSERT_INTO = """
INSERT INTO queue AS q (object_name, record_id, version, change_type, source,
                        first_enqueued_at, last_enqueued_at, commit_ts_ms, next_attempt_at)
"""
UPSERT_CONFLICT = """
ON CONFLICT (object_name, record_id) DO UPDATE SET
    version = q.version + excluded.version,
    change_type = excluded.change_type,
    source = excluded.source,
    last_enqueued_at = excluded.last_enqueued_at,
    commit_ts_ms = least(q.commit_ts_ms, excluded.commit_ts_ms),
    requeued_at = CASE WHEN q.lease_token IS NULL THEN NULL
                       ELSE coalesce(q.requeued_at, excluded.last_enqueued_at) END,
    requeued_commit_ts_ms = CASE WHEN q.lease_token IS NULL THEN NULL
                                 ELSE least(q.requeued_commit_ts_ms, excluded.commit_ts_ms) END
"""
UPSERT_SQL = f"""{UPSERT_INTO}
SELECT u.o, u.r, u.n, u.c, $5::text, $6::float8, $6::float8, $7::bigint, $6::float8
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(o, r, c, n)
{UPSERT_CONFLICT}"""

CLEAR_LEASE = "lease_owner = NULL, lease_token = NULL, leased_at = NULL, lease_expires_at = NULL"
NEWER_ONLY = f"""{CLEAR_LEASE}, attempts = 0, outage_retries = 0, last_error = NULL,
    commit_ts_ms = q.requeued_commit_ts_ms,
    first_enqueued_at = coalesce(q.requeued_at, q.first_enqueued_at),
    requeued_at = NULL, requeued_commit_ts_ms = NULL"""
BY_TOKEN = "q.object_name = u.o AND q.record_id = u.r AND q.lease_token = u.t"
BY_VERSION_TOKEN = f"{BY_TOKEN} AND q.version = u.v"
TOKENS = "unnest($1::text[], $2::text[], $3::text[]) AS u(o, r, t)"
VERSION_TOKENS = "unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(o, r, t, v)"
# The dead letter of a record that syncs is cleared (it is no longer poison), in the statement
# that deletes its row; the snapshot of both sees the rows as leased. Each row is found by its
# primary key, one index probe per lease (a join would hash the whole queue when the planner
# prices that lower), then deleted by its physical address. A row updated since (re-enqueued)
# has moved to a new address, so it is not deleted: `ack` then settles it by token.
ACK_DELETE_SQL = f"""
WITH cleared AS (
    DELETE FROM dead_letter AS d USING {TOKENS}
    WHERE d.object_name = u.o AND d.record_id = u.r
      AND EXISTS (SELECT 1 FROM queue AS q WHERE {BY_TOKEN})
    RETURNING 1),
deleted AS (
    DELETE FROM queue WHERE ctid = ANY(ARRAY(
        SELECT (SELECT q.ctid FROM queue AS q WHERE {BY_VERSION_TOKEN}) FROM {VERSION_TOKENS}))
    RETURNING 1)
SELECT (SELECT count(*) FROM deleted), (SELECT count(*) FROM cleared)
"""
ACK_KEEP_SQL = f"""UPDATE queue AS q SET {NEWER_ONLY}, next_attempt_at =
    coalesce(q.leased_at, q.next_attempt_at) FROM {TOKENS} WHERE {BY_TOKEN}"""
LEASE_COLUMNS = (
    "q.object_name, q.record_id, q.version, q.change_type, q.source, q.attempts, "
    "q.commit_ts_ms, q.first_enqueued_at, q.outage_retries"
)


async def upsert_queue(conn: Connection, items: Sequence[QueueInput], source: str,
                       commit_ts_ms: int | None, now: float) -> None:
    """Enqueue `items` (coalescing) inside the caller's transaction, in key order."""
    changes: dict[tuple[str, str], str] = {}
    counts: dict[tuple[str, str], int] = {}
    for item in items:
        key = (item.object_name, item.record_id)
        changes[key] = item.change_type  # the latest change wins, as repeated upserts would
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return
    keys = sorted(counts)
    await conn.execute(
        UPSERT_SQL, [k[0] for k in keys], [k[1] for k in keys],
        [changes[k] for k in keys], [counts[k] for k in keys], source, now, commit_ts_ms)


def _by_token(leases: Sequence[Lease]) -> list[Lease]:
    """One lease per (object, record, token), in key order (the last one given wins)."""
    unique = {(lease.object_name, lease.record_id, lease.token): lease for lease in leases}
    return [unique[key] for key in sorted(unique)]


def _token_arrays(leases: Sequence[Lease]) -> tuple[list[str], list[str], list[str]]:
    return ([x.object_name for x in leases], [x.record_id for x in leases],
            [x.token for x in leases])


async def dead_letter_rows(conn: Connection, failures: Sequence[tuple[Lease, str, str, int]],
                           now: float) -> tuple[int, int]:
    """Move leased rows to dead_letter when version and token still match; returns
    (dead-lettered, kept because a newer change arrived). See the SQLite `_dead_letter_rows`."""
    unique = {(f[0].object_name, f[0].record_id, f[0].token): f for f in failures}
    rows = [unique[key] for key in sorted(unique)]
    if not rows:
        return 0, 0
    leases = [row[0] for row in rows]
    keys = (*_token_arrays(leases), [x.version for x in leases])
    await conn.execute(
        f"""
        INSERT INTO dead_letter AS d (object_name, record_id, change_type, reason, last_error,
                                      attempts, first_failed_at, last_failed_at)
        SELECT q.object_name, q.record_id, q.change_type, u.reason, u.err, u.n, $8, $8
        FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                    $7::int[]) AS u(o, r, t, v, reason, err, n)
        JOIN queue AS q ON {BY_VERSION_TOKEN}
        ORDER BY q.object_name, q.record_id
        ON CONFLICT (object_name, record_id) DO UPDATE SET
            change_type = excluded.change_type, reason = excluded.reason,
            last_error = excluded.last_error, attempts = excluded.attempts,
            last_failed_at = excluded.last_failed_at
        """,
        *keys, [row[1] for row in rows], [clean_error(row[2]) for row in rows],
        [row[3] for row in rows], now)
    dead = rows_affected(await conn.execute(
        f"DELETE FROM queue AS q USING {VERSION_TOKENS} WHERE {BY_VERSION_TOKEN}", *keys))
    kept = rows_affected(await conn.execute(
        f"UPDATE queue AS q SET {NEWER_ONLY}, next_attempt_at = $4 FROM {TOKENS} "
        f"WHERE {BY_TOKEN}", *keys[:3], now))
    return dead, kept


class QueueOps(ReplayOps, PgBase):
    """Queue operations; all times are passed in (epoch seconds)."""

    async def record_event(self, channel: str, replay_id: str | int | None,
                           items: Sequence[QueueInput], commit_ts_ms: int | None,
                           now: float, events: Sequence[EventCandidate] = ()) -> None:
        """Enqueue the ids of one CDC event and store the channel's replay id, atomically
        (docs/design.md invariant 1), with the change's event-rule candidates."""
        check_replay_id(replay_id)

        async def body(conn: Connection) -> None:
            await upsert_queue(conn, items, "cdc", commit_ts_ms, now)
            await insert_events(conn, events, now)
            await upsert_replay(conn, channel, replay_id, commit_ts_ms, now, keep=True)

        await self._write("record_event", body)

    async def enqueue(self, items: Sequence[QueueInput], now: float, source: str,
                      commit_ts_ms: int | None = None) -> int:
        """Enqueue records without a replay id (reconcile, fan-out, catch-up, retry)."""
        _check_source(source)
        if not items:
            return 0

        async def body(conn: Connection) -> None:
            await upsert_queue(conn, items, source, commit_ts_ms, now)

        await self._write("enqueue", body, one_statement=True)
        return len(items)

    async def lease(self, owner: str, limit: int, lease_s: float, now: float,
                    objects: Sequence[str] | None = None,
                    max_attempts: int | None = None) -> list[Lease]:
        """Lease up to `limit` due rows, oldest first, until `now + lease_s`; rows another
        transaction holds are skipped, not waited for (see the SQLite `lease`)."""
        if limit <= 0 or (objects is not None and not objects):
            return []
        token = f"{owner}/{secrets.token_hex(6)}"
        expires = now + lease_s
        where = "next_attempt_at <= $3"
        params: list[object] = [owner, token, now, expires, int(limit)]
        if objects is not None:
            where += " AND object_name = ANY($6::text[])"
            params.append(list(objects))
        # The due rows are found by the `queue_due` index and locked (skipping rows another
        # transaction holds), then updated by their physical address (ctid: stable while we
        # hold the lock), so a lease costs the batch, never a scan or hash of the whole queue.
        sql = f"""
            WITH due AS (
                SELECT ctid FROM queue WHERE {where}
                ORDER BY next_attempt_at LIMIT $5 FOR UPDATE SKIP LOCKED)
            UPDATE queue AS q SET lease_owner = $1, lease_token = $2, leased_at = $3,
                lease_expires_at = $4, next_attempt_at = $4,
                attempts = q.attempts + (q.lease_token IS NOT NULL)::int,
                requeued_at = NULL, requeued_commit_ts_ms = NULL
            WHERE q.ctid = ANY(ARRAY(SELECT ctid FROM due))
            RETURNING {LEASE_COLUMNS}
        """

        async def body(conn: Connection) -> list[Lease]:
            return [
                Lease(object_name=row[0], record_id=row[1], version=row[2], change_type=row[3],
                      source=row[4], attempts=row[5], commit_ts_ms=row[6],
                      first_enqueued_at=row[7], token=token, lease_expires_at=expires,
                      outage_retries=row[8])
                for row in await conn.fetch(sql, *params)
            ]

        leases = await self._write("lease", body, one_statement=True)
        if max_attempts is not None:
            crashed = [lease for lease in leases if lease.attempts >= max_attempts]
            if crashed:
                await self._dead_letter_crashed(crashed, now)
                leases = [lease for lease in leases if lease.attempts < max_attempts]
        leases.sort(key=lambda lease: (lease.first_enqueued_at, lease.object_name, lease.record_id))
        return leases

    async def _dead_letter_crashed(self, crashed: Sequence[Lease], now: float) -> None:
        """Dead-letter `lease_expired` rows just leased whose leases kept expiring. A separate
        transaction (rare: the lease itself stays one statement); the rows are ours meanwhile,
        and one re-enqueued in between starts over instead, as after `retry_later`."""

        async def body(conn: Connection) -> None:
            await dead_letter_rows(conn, [
                (lease, LEASE_EXPIRED,
                 f"attempt {lease.attempts} ended in an expired lease, without ack, retry or "
                 "release (a flusher crashed or hung on it)", lease.attempts)
                for lease in crashed], now)

        await self._write("lease", body)

    async def ack(self, leases: Sequence[Lease]) -> AckResult:
        """Delete each row whose version is still the leased one; a row re-enqueued meanwhile
        stays, due at once (docs/design.md invariants 2 and 10)."""
        unique = _by_token(leases)
        if not unique:
            return AckResult(0, 0)
        tokens = _token_arrays(unique)
        versions = [x.version for x in unique]

        async def delete(conn: Connection) -> tuple[int, int]:
            row = await conn.fetchrow(ACK_DELETE_SQL, *tokens, versions)
            assert row is not None
            return int(row[0]), int(row[1])

        async def settle_rest(conn: Connection) -> tuple[int, int]:
            deleted = rows_affected(await conn.execute(
                f"DELETE FROM queue AS q USING {VERSION_TOKENS} WHERE {BY_VERSION_TOKEN}",
                *tokens, versions))
            return deleted, rows_affected(await conn.execute(ACK_KEEP_SQL, *tokens))

        # Usually every row is deleted: one statement. Rows left (re-enqueued since the lease,
        # or updated while the statement ran) are settled in a second transaction that sees
        # their newest version; meanwhile they stay leased to this token, nobody else's.
        deleted, cleared = await self._write("ack", delete, one_statement=True)
        kept = 0
        if deleted < len(unique):
            more, kept = await self._write("ack", settle_rest)
            deleted += more
        return AckResult(deleted=deleted, kept=kept, dead_letters_cleared=cleared)

    async def retry_later(self, leases: Sequence[Lease], error: str, now: float,
                          backoff: Backoff, retry_after_s: float | None = None) -> SettleResult:
        """A transient failure: attempts + 1 and a jittered backoff; dead letter
        `retries_exhausted` at `backoff.max_attempts` (unless a newer change arrived)."""
        unique = _by_token(leases)
        if not unique:
            return SettleResult()
        error = clean_error(error)
        exhausted = [(x, RETRIES_EXHAUSTED, error, x.attempts + 1) for x in unique
                     if x.attempts + 1 >= backoff.max_attempts]
        later = [x for x in unique if x.attempts + 1 < backoff.max_attempts]
        due = [now + backoff.delay_s(x.attempts + 1, retry_after_s) for x in later]

        async def body(conn: Connection) -> SettleResult:
            retried = 0
            if later:
                retried = rows_affected(await conn.execute(
                    f"""UPDATE queue AS q SET {CLEAR_LEASE}, attempts = u.n,
                        next_attempt_at = u.due, last_error = $6, requeued_at = NULL,
                        requeued_commit_ts_ms = NULL
                        FROM unnest($1::text[], $2::text[], $3::text[], $4::int[],
                                    $5::float8[]) AS u(o, r, t, n, due)
                        WHERE {BY_TOKEN}""",
                    *_token_arrays(later), [x.attempts + 1 for x in later], due, error))
            dead, kept = await dead_letter_rows(conn, exhausted, now)
            return SettleResult(retried=retried, dead_lettered=dead, kept_newer=kept,
                                stale=len(unique) - retried - dead - kept)

        return await self._write("retry_later", body)

    async def wait_out(self, leases: Sequence[Lease], error: str, now: float, backoff: Backoff,
                       retry_after_s: float | None = None,
                       until: float | None = None) -> SettleResult:
        """Salesforce or Iterable failed, not the records: outage_retries + 1, attempts kept;
        due at `until` (at least `retry_after_s` away) or after a backoff by outage retries."""
        unique = _by_token(leases)
        if not unique:
            return SettleResult()
        error = clean_error(error)
        due = [max(until, now + (retry_after_s or 0.0)) if until is not None
               else now + backoff.delay_s(x.outage_retries + 1, retry_after_s) for x in unique]

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                f"""UPDATE queue AS q SET {CLEAR_LEASE}, outage_retries = q.outage_retries + 1,
                    next_attempt_at = u.due, last_error = $5, requeued_at = NULL,
                    requeued_commit_ts_ms = NULL
                    FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])
                         AS u(o, r, t, due)
                    WHERE {BY_TOKEN}""",
                *_token_arrays(unique), due, error))

        retried = await self._write("wait_out", body)
        return SettleResult(retried=retried, stale=len(unique) - retried)

    async def resume_waiting(self, now: float) -> int:
        """An outage ended: every unleased row waiting it out is due now."""

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                "UPDATE queue SET outage_retries = 0, next_attempt_at = least(next_attempt_at, $1)"
                " WHERE outage_retries > 0 AND lease_token IS NULL", now))

        return await self._write("resume_waiting", body)

    async def dead_letter(self, leases: Sequence[Lease], reason: str, error: str,
                          now: float) -> SettleResult:
        """Poison records: move each to the dead-letter table if its version is unchanged."""
        return await self.dead_letter_each([Failure(lease, reason, error) for lease in leases], now)

    async def dead_letter_each(self, failures: Sequence[Failure], now: float) -> SettleResult:
        """Like `dead_letter`, with a reason and error per record."""
        if not failures:
            return SettleResult()
        rows = [(f.lease, f.reason, f.error, f.lease.attempts + 1) for f in failures]
        unique = len({(f.lease.object_name, f.lease.record_id, f.lease.token) for f in failures})

        async def body(conn: Connection) -> tuple[int, int]:
            return await dead_letter_rows(conn, rows, now)

        dead, kept = await self._write("dead_letter", body)
        return SettleResult(dead_lettered=dead, kept_newer=kept, stale=unique - dead - kept)

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give leases back without penalty (shutdown); the rows are due again at once."""
        unique = _by_token(leases)
        if not unique:
            return 0

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                f"""UPDATE queue AS q SET {CLEAR_LEASE},
                    next_attempt_at = coalesce(q.leased_at, q.next_attempt_at),
                    requeued_at = NULL, requeued_commit_ts_ms = NULL
                    FROM {TOKENS} WHERE {BY_TOKEN}""", *_token_arrays(unique)))

        return await self._write("release", body)

    async def expire_leases(self, now: float) -> int:
        """End every live lease now (for a single owner that took over the whole store)."""

        async def body(conn: Connection) -> int:
            return rows_affected(await conn.execute(
                "UPDATE queue SET lease_expires_at = $1, next_attempt_at = $1 "
                "WHERE lease_token IS NOT NULL AND lease_expires_at > $1", now))

        return await self._write("expire_leases", body)

    async def queue_stats(self, now: float) -> QueueStats:
        """Depth, rows due now, rows under a live lease, rows in backoff, oldest row's age."""
        async with self._read("queue_stats") as conn:
            row = await conn.fetchrow(
                """
                SELECT count(*),
                       count(*) FILTER (WHERE next_attempt_at <= $1),
                       count(*) FILTER (WHERE lease_expires_at > $1),
                       count(*) FILTER (WHERE (attempts > 0 OR outage_retries > 0)
                                        AND next_attempt_at > $1 AND lease_token IS NULL),
                       min(first_enqueued_at)
                FROM queue
                """, now)
        assert row is not None
        oldest = None if row[4] is None else max(0.0, now - float(row[4]))
        return QueueStats(depth=int(row[0]), due=int(row[1]), leased=int(row[2]),
                          retrying=int(row[3]), oldest_age_s=oldest)

    async def queue_depth_by_object(self) -> dict[str, int]:
        """Rows per Salesforce object."""
        async with self._read("queue_depth_by_object") as conn:
            rows = await conn.fetch("SELECT object_name, count(*) FROM queue GROUP BY object_name")
        return {str(row[0]): int(row[1]) for row in rows}

    async def leased_elsewhere(self, object_name: str, owner: str, now: float) -> int:
        """Rows of `object_name` under a live lease whose owner is not `owner` (see the SQLite
        `leased_elsewhere`)."""
        async with self._read("leased_elsewhere") as conn:
            value = await conn.fetchval(
                "SELECT count(*) FROM queue WHERE object_name = $1 AND lease_token IS NOT NULL "
                "AND lease_expires_at > $2 AND lease_owner IS DISTINCT FROM $3",
                object_name, now, owner)
        return int(value or 0)

    async def next_due(self, objects: Sequence[str] | None = None) -> float | None:
        """The earliest `next_attempt_at` of a row of `objects` (None: any), leased included."""
        if objects is not None and not objects:
            return None
        async with self._read("next_due") as conn:
            if objects is None:
                value = await conn.fetchval(
                    "SELECT next_attempt_at FROM queue ORDER BY next_attempt_at LIMIT 1")
            else:
                value = await conn.fetchval(
                    "SELECT next_attempt_at FROM queue WHERE object_name = ANY($1::text[]) "
                    "ORDER BY next_attempt_at LIMIT 1", list(objects))
        return None if value is None else float(value)
